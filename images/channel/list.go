package channel

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/imgctl/imgctl/images/store"

	digest "github.com/opencontainers/go-digest"
)

// ChannelState is where a channel points now, for `imgctl channel list`.
type ChannelState struct {
	Name string        `json:"name"`
	Head digest.Digest `json:"head,omitempty"` // "" for a channel that never moved
	// Version is the head image's version: from the store when the image is there, else as
	// the history recorded it.
	Version string `json:"version,omitempty"`
	// InStore reports whether the store holds the head image (false for an empty channel, or
	// an image removed from the store).
	InStore  bool      `json:"inStore"`
	LastMove time.Time `json:"lastMove,omitzero"` // When of the last entry
	Entries  int       `json:"entries"`
}

// List returns the state of every configured channel, in promotion order. With st nil, the
// versions are those recorded in the histories and InStore is false.
func (l *Log) List(ctx context.Context, st *store.Store) ([]ChannelState, error) {
	return List(ctx, l, st)
}

// List is Log.List for any Backend (st: the local store to look versions up in, or nil).
func List(ctx context.Context, b Backend, st *store.Store) ([]ChannelState, error) {
	order, err := b.Order()
	if err != nil {
		return nil, err
	}
	var imgs map[digest.Digest]store.Image
	if st != nil {
		// An image that cannot be read just has no InStore: the channels are listed anyway.
		list, _, err := st.ListAll(ctx)
		if err != nil {
			return nil, fmt.Errorf("listing channels: %w", err)
		}
		imgs = make(map[digest.Digest]store.Image, len(list))
		for _, img := range list {
			imgs[img.Digest()] = img
		}
	}
	out := make([]ChannelState, 0, len(order))
	for _, ch := range order {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		h, err := b.History(ctx, ch)
		if err != nil {
			return nil, fmt.Errorf("listing channels: %w", err)
		}
		cs := ChannelState{Name: ch, Entries: len(h.Entries)}
		if n := len(h.Entries); n > 0 {
			last := h.Entries[n-1]
			cs.Head, cs.Version, cs.LastMove = last.To, last.ToVersion, last.When
			if img, ok := imgs[last.To]; ok {
				cs.Version, cs.InStore = img.Config.Version, true
			}
		}
		out = append(out, cs)
	}
	return out, nil
}

// AllHistories returns the history of every channel that has one, in or out of the current
// order (a channel dropped from the order keeps its history, and what it names must survive
// garbage collection), sorted by channel name.
func (l *Log) AllHistories(ctx context.Context) ([]History, error) {
	ents, err := os.ReadDir(l.dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	var out []History
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || e.IsDir() || name == "order" || ValidateName(name) != nil {
			continue
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		h, err := l.readHistory(name)
		if err != nil {
			return nil, err
		}
		out = append(out, h)
	}
	slices.SortFunc(out, func(a, b History) int { return strings.Compare(a.Channel, b.Channel) })
	return out, nil
}

// GCRoots returns the images garbage collection must keep for the channels: every channel's
// head and the keep images each pointed to before (-1: all), from every history (in or out of
// the order). Use it as store.GCOptions.RootsFunc, which runs it under the store lock.
func (l *Log) GCRoots(ctx context.Context, keep int) ([]digest.Digest, error) {
	hs, err := l.AllHistories(ctx)
	if err != nil {
		return nil, err
	}
	refs := make([]store.HistoryRefs, 0, len(hs))
	for _, h := range hs {
		r := store.HistoryRefs{Channel: h.Channel}
		for _, e := range h.Entries {
			r.To = append(r.To, e.To)
		}
		refs = append(refs, r)
	}
	return store.RootsFromHistories(refs, keep)
}
