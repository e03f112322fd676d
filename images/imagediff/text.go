package imagediff

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/dustin/go-humanize"
)

// WriteText writes r for a terminal: at most maxFiles changed paths of each kind (0: all).
func WriteText(w io.Writer, r *Report, maxFiles int) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "a\t%s\t%s\n", r.A.Version, r.A.Digest)
	fmt.Fprintf(tw, "b\t%s\t%s\n", r.B.Version, r.B.Digest)
	fmt.Fprintln(tw, "\nLAYER\tCHANGE\tA\tB")
	for _, l := range r.Layers {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", l.Role, l.Change, layerSide(l.Old), layerSide(l.New))
	}
	fmt.Fprintln(tw, "\nARTIFACT\tCHANGE\tA\tB")
	for _, a := range r.Boot {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", a.Name, a.Change, blobSide(a.Old), blobSide(a.New))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if r.Files == nil {
		fmt.Fprintf(w, "\nfiles: not compared: %s\n", r.FilesMissing)
	} else {
		f := r.Files
		fmt.Fprintf(w, "\nfiles: %d changed (%s in b), %d added (%s), %d removed (%s), %d unchanged\n", f.Changed, size(f.ChangedBytes),
			f.Added, size(f.AddedBytes), f.Removed, size(f.RemovedBytes), f.Unchanged)
		for _, kind := range []string{Changed, Added, Removed} {
			shown, left := 0, 0
			for _, c := range f.Changes {
				if c.Change != kind {
					continue
				}
				if maxFiles > 0 && shown >= maxFiles {
					left++
					continue
				}
				shown++
				fmt.Fprintf(w, "  %-8s /%s  %s\n", kind, c.Path, fileDetail(c))
			}
			if left > 0 {
				fmt.Fprintf(w, "  … and %d more %s (-o json lists all)\n", left, kind)
			}
		}
	}
	if r.Blocks == nil {
		fmt.Fprintf(w, "\nroot blocks: not compared: %s\n", r.BlocksMissing)
		return nil
	}
	b, u := r.Blocks, r.Update
	fmt.Fprintf(w, "\nroot blocks: b has %d blocks of 4 KiB: %d in a (copied), %d not (fetched)\n", b.Blocks, b.Copy, b.Fetch)
	parts := []string{size(u.BlockBytes) + " of blocks"}
	if u.HashAreaBytes > 0 {
		parts = append(parts, size(u.HashAreaBytes)+" hash area")
	}
	if u.KernelBytes > 0 {
		parts = append(parts, size(u.KernelBytes)+" kernel")
	}
	if u.InitrdBytes > 0 {
		parts = append(parts, size(u.InitrdBytes)+" initrd")
	}
	_, err := fmt.Fprintf(w, "an update from a to b fetches %s (%.1f%% of b's root, %s): %s\n", size(u.FetchBytes), u.Percent,
		size(u.RootBytes), strings.Join(parts, " + "))
	return err
}

func layerSide(v *Version) string {
	if v == nil {
		return "-"
	}
	s := shortDigest(v.Digest) + " " + size(v.Size)
	if v.Version != "" {
		s = v.Version + " " + s
	}
	return s
}

func blobSide(b *Blob) string {
	if b == nil {
		return "-"
	}
	return shortDigest(b.Digest) + " " + size(b.Size)
}

func fileDetail(c FileChange) string {
	switch c.Change {
	case Added:
		return c.Type + " " + size(c.NewSize)
	case Removed:
		return c.Type + " " + size(c.OldSize)
	}
	s := c.Type + " " + strings.Join(c.What, ",")
	if c.OldSize != c.NewSize {
		s += " " + size(c.OldSize) + " -> " + size(c.NewSize)
	} else if c.Type == "file" {
		s += " " + size(c.NewSize)
	}
	return s
}

func shortDigest(d string) string {
	if len(d) > 19 {
		return d[:19]
	}
	return d
}

func size(n int64) string { return humanize.IBytes(uint64(n)) }
