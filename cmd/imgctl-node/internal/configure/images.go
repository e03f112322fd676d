package configure

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/render"
)

// ImagesDir holds container images baked into the image as OCI archives (source URIs
// oci://…#image=PATH): configure imports them into containerd before the kubelet starts, so
// nothing is pulled at boot.
const ImagesDir = "/usr/lib/imgctl/images"

// bakedImage is one archive in ImagesDir and the image name it carries.
type bakedImage struct {
	Path string // on the node
	Name string
}

// bakedImages lists ImagesDir's *.tar archives, sorted, with their names.
func bakedImages(root string) ([]bakedImage, error) {
	ents, err := os.ReadDir(filepath.Join(root, ImagesDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []bakedImage
	for _, e := range ents {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".tar") {
			continue
		}
		p := path.Join(ImagesDir, e.Name())
		name, err := archiveName(filepath.Join(root, p))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		out = append(out, bakedImage{Path: p, Name: name})
	}
	slices.SortFunc(out, func(a, b bakedImage) int { return strings.Compare(a.Path, b.Path) })
	return out, nil
}

// importsFor splits the baked images into those configure imports and the names of those the
// plan says this machine never runs (render.Plan.SkipImages).
func importsFor(baked []bakedImage, plan *render.Plan) (imports []bakedImage, skipped []string) {
	for _, im := range baked {
		if slices.Contains(plan.SkipImages, im.Name) {
			skipped = append(skipped, im.Name)
		} else {
			imports = append(imports, im)
		}
	}
	return imports, skipped
}

// skippedKV is what the images line says of the images importsFor left out (nothing if none).
func skippedKV(skipped []string) []any {
	if len(skipped) == 0 {
		return nil
	}
	return []any{"skipped", strings.Join(skipped, ","), "skipped-why", render.ControlPlaneOnlyWhy}
}

// archiveName reads the image name from an OCI archive's index.json (the annotation containerd's
// import uses, or the OCI ref name).
func archiveName(file string) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return "", errors.New("not an OCI archive: no index.json")
		}
		if err != nil {
			return "", fmt.Errorf("reading the archive: %w", err)
		}
		if strings.TrimPrefix(hdr.Name, "./") != "index.json" {
			continue
		}
		var idx struct {
			Manifests []struct {
				Annotations map[string]string `json:"annotations"`
			} `json:"manifests"`
		}
		if err := json.NewDecoder(io.LimitReader(tr, 1<<20)).Decode(&idx); err != nil {
			return "", fmt.Errorf("index.json: %w", err)
		}
		if len(idx.Manifests) != 1 {
			return "", fmt.Errorf("index.json: %d manifests, expected one image", len(idx.Manifests))
		}
		a := idx.Manifests[0].Annotations
		for _, k := range []string{"io.containerd.image.name", "org.opencontainers.image.ref.name"} {
			if a[k] != "" {
				return a[k], nil
			}
		}
		return "", errors.New("index.json: the image has no name (annotation io.containerd.image.name)")
	}
}
