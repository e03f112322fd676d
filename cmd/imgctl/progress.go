package main

import (
	"fmt"
	"io"
	"path"
	"sync"

	"github.com/imgctl/imgctl/layers/fetch"
)

// progressBars renders one line per active download on a terminal.
type progressBars struct {
	mu sync.Mutex
	w  io.Writer
}

func newProgressBars(w io.Writer) *progressBars { return &progressBars{w: w} }

func (p *progressBars) update(pr fetch.Progress) {
	p.mu.Lock()
	defer p.mu.Unlock()
	name := path.Base(pr.URL)
	if len(name) > 40 {
		name = name[:37] + "..."
	}
	if pr.Done {
		fmt.Fprintf(p.w, "\r\033[K✓ %-40s %s\n", name, human(pr.Complete))
		return
	}
	if pr.Total > 0 {
		const width = 30
		filled := int(pr.Complete * width / pr.Total)
		bar := make([]byte, width)
		for i := range bar {
			bar[i] = ' '
			if i < filled {
				bar[i] = '='
			}
		}
		fmt.Fprintf(p.w, "\r\033[K  %-40s [%s] %s / %s", name, bar, human(pr.Complete), human(pr.Total))
		return
	}
	fmt.Fprintf(p.w, "\r\033[K  %-40s %s", name, human(pr.Complete))
}
