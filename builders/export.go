package builders

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/sparse"
	"github.com/imgctl/imgctl/images/store"
)

// exportArtifacts places each artifact in dir under its name, as a file of its own (a reflink
// where the filesystem shares extents, else a copy: never a hard link, since the user may write
// to the output and must not thereby change the store); a sparse disk image is expanded to
// disk.raw (holes stay holes). It returns the files written.
func exportArtifacts(ctx context.Context, st *store.Store, dir string, artifacts []manifest.Artifact) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var files []string
	for _, a := range artifacts {
		name := a.Name
		if a.MediaType == manifest.DiskSparseMediaType {
			name = strings.TrimSuffix(name, ".simg") + ".raw"
		}
		dst := filepath.Join(dir, name)
		tmp := dst + ".tmp"
		_ = os.Remove(tmp)
		var err error
		switch {
		case a.MediaType == manifest.DiskSparseMediaType:
			err = expandFile(ctx, st, a.Digest, tmp)
		default:
			err = cloneFile(ctx, st, a.Digest, tmp)
		}
		if err == nil {
			err = os.Rename(tmp, dst)
		}
		if err != nil {
			_ = os.Remove(tmp)
			return files, fmt.Errorf("exporting %s: %w", name, err)
		}
		files = append(files, dst)
	}
	return files, nil
}

// writeBlobTo writes blob d to a new file dst through fill (a plain copy, or a sparse
// expansion), then fsyncs it. The caller removes dst on error.
func writeBlobTo(ctx context.Context, st *store.Store, d digest.Digest, dst string, fill func(f *os.File, r io.Reader) error) error {
	rc, err := st.OpenBlob(ctx, d)
	if err != nil {
		return err
	}
	defer rc.Close()
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if err := fill(f, rc); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func expandFile(ctx context.Context, st *store.Store, d digest.Digest, dst string) error {
	return writeBlobTo(ctx, st, d, dst, func(f *os.File, r io.Reader) error {
		_, err := sparse.Expand(ctx, f, r)
		return err
	})
}

// cloneFile writes blob d to the new file dst as a reflink (FICLONE: shared extents, copied on
// write, so a write to dst never reaches the store) and checks the clone's digest; where the
// filesystem cannot clone, it copies.
func cloneFile(ctx context.Context, st *store.Store, d digest.Digest, dst string) error {
	src, err := st.BlobPath(d)
	if err != nil {
		return err
	}
	err = reflink(src, dst)
	if err == nil {
		err = checkDigest(ctx, dst, d)
	}
	if err != nil {
		_ = os.Remove(dst)
		return copyFile(ctx, st, d, dst)
	}
	return nil
}

// reflink makes dst, a new file, share src's extents, and fsyncs it.
func reflink(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd())); err != nil {
		out.Close()
		return fmt.Errorf("reflink %s to %s: %w", src, dst, err)
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// checkDigest re-reads the file at path and fails unless it hashes to d.
func checkDigest(ctx context.Context, path string, d digest.Digest) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	v := d.Verifier()
	buf := make([]byte, 1<<20)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := f.Read(buf)
		_, _ = v.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	if !v.Verified() {
		return fmt.Errorf("%s does not hash to %s", path, d)
	}
	return nil
}

func copyFile(ctx context.Context, st *store.Store, d digest.Digest, dst string) error {
	return writeBlobTo(ctx, st, d, dst, func(f *os.File, r io.Reader) error {
		_, err := io.Copy(f, r)
		return err
	})
}
