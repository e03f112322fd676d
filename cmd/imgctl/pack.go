package main

import (
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/imgctl/imgctl/builders"
	"github.com/imgctl/imgctl/images/ociimage"
	"github.com/imgctl/imgctl/layers/kubeversion"
)

func (a *app) imagesPackCmd() *cobra.Command {
	var (
		dir   string
		s     ociimage.Spec
		files []string
		dirs  []string
	)
	cmd := &cobra.Command{
		Use:   "pack --layout DIR --name REF [--file SRC:DST[:MODE]]... [--dir SRC:DST]... [--entrypoint ARG]... [--cmd ARG]... [--env K=V]... [--user UID[:GID]]",
		Short: "Pack host files into a minimal linux/amd64 OCI image in a local OCI layout (adds or replaces REF)",
		Long: `Pack host files and directory trees into a minimal linux/amd64 OCI image — one layer, entries
sorted and owned by 0:0, every time SOURCE_DATE_EPOCH (or the epoch), parent directories made —
and add it to the OCI layout DIR (created if missing) under REF, replacing the image of that
name. index.json names it by org.opencontainers.image.ref.name and io.containerd.image.name,
so "ctr images import" and an imgctl oci-layout source (#image=…&name=REF) find it. The same
inputs give the same digest. Prints the manifest digest (-o json: the digest, sizes, entries).

--file SRC:DST[:MODE] copies a host file (symlinks followed) to DST, an absolute path in the
image, with the octal MODE (default: SRC's permission bits); SRC may contain ':'.
--dir SRC:DST copies a directory tree (DST / for a root file system), keeping its permission
bits and symbolic links. A path given twice is refused, except directories, which merge.`,
		Example: `  imgctl images pack --layout out/layout --name registry.imgctl.invalid/kubernetes/pause:3.4.1 \
    --file bin/imgctl-pause:/pause:0755 --entrypoint /pause`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := a.checkFormat(); err != nil {
				return err
			}
			if dir == "" || s.Name == "" {
				return fmt.Errorf("--layout and --name are required")
			}
			for _, f := range files {
				pf, err := parseFileFlag(f)
				if err != nil {
					return err
				}
				s.Files = append(s.Files, pf)
			}
			for _, d := range dirs {
				src, dst, ok := splitSrcDst(d)
				if !ok {
					return fmt.Errorf("--dir %q: expected SRC:DST with DST an absolute path in the image (e.g. out/rootfs:/)", d)
				}
				s.Dirs = append(s.Dirs, ociimage.Dir{Src: src, Dst: dst})
			}
			epoch, err := builders.ParseSourceDateEpoch(os.Getenv("SOURCE_DATE_EPOCH"))
			if err != nil {
				return err
			}
			if epoch != nil {
				s.Created = time.Unix(*epoch, 0)
			}
			res, err := ociimage.Pack(cmd.Context(), dir, s, a.logger())
			if err != nil {
				return err
			}
			if a.json() {
				return a.printJSON(res)
			}
			_, err = fmt.Fprintln(a.out, res.Digest)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "layout", "", "OCI image layout directory (created if missing)")
	f.StringVar(&s.Name, "name", "", "full image name REGISTRY/REPOSITORY:TAG")
	f.StringArrayVar(&files, "file", nil, "host file into the image: SRC:DST[:MODE] (repeatable)")
	f.StringArrayVar(&dirs, "dir", nil, "host directory tree into the image: SRC:DST (repeatable)")
	f.StringArrayVar(&s.Entrypoint, "entrypoint", nil, "entrypoint argument (repeatable, in order)")
	f.StringArrayVar(&s.Cmd, "cmd", nil, "cmd argument (repeatable, in order)")
	f.StringArrayVar(&s.Env, "env", nil, "environment entry KEY=VALUE (repeatable)")
	f.StringVar(&s.User, "user", "", "user UID[:GID] (numeric)")
	f.StringVar(&s.WorkingDir, "workdir", "", "working directory (absolute)")
	return cmd
}

var fileMode = regexp.MustCompile(`:([0-7]{3,4})$`)

// parseFileFlag reads --file SRC:DST[:MODE].
func parseFileFlag(v string) (ociimage.File, error) {
	rest, mode := v, fs.FileMode(0)
	if m := fileMode.FindStringSubmatch(v); m != nil {
		n, _ := strconv.ParseUint(m[1], 8, 32) // [0-7]{3,4}: always parses
		mode = fs.FileMode(n & 0o777)
		for bit, flag := range map[uint64]fs.FileMode{0o4000: fs.ModeSetuid, 0o2000: fs.ModeSetgid, 0o1000: fs.ModeSticky} {
			if n&bit != 0 {
				mode |= flag
			}
		}
		rest = strings.TrimSuffix(v, m[0])
	}
	src, dst, ok := splitSrcDst(rest)
	if !ok {
		return ociimage.File{}, fmt.Errorf("--file %q: expected SRC:DST[:MODE] with DST an absolute path in the image and MODE octal (e.g. bin/pause:/pause:0755)", v)
	}
	return ociimage.File{Src: src, Dst: dst, Mode: mode}, nil
}

// splitSrcDst splits SRC:DST at the last ":/" (SRC may contain ':'; DST starts with /).
func splitSrcDst(v string) (src, dst string, ok bool) {
	i := strings.LastIndex(v, ":/")
	if i <= 0 {
		return "", "", false
	}
	return v[:i], v[i+1:], true
}

func (a *app) imagesControlPlaneNamesCmd() *cobra.Command {
	var (
		k8s, repo string
		tags      []string
	)
	cmd := &cobra.Command{
		Use:   "control-plane-names [--k8s VERSION] [--repository R] [--tag COMPONENT=TAG]...",
		Short: "Print the control-plane images kubeadm expects: COMPONENT NAME per line",
		Long: `Print the seven images kubeadm VERSION expects with imageRepository R (default ` + kubeversion.ControlPlaneRepository + `),
one "COMPONENT NAME" line each, in kubeadm's order; --tag replaces a component's tag (the
etcd or CoreDNS release actually built, which the node's kubeadm configuration then names).
scripts/build-control-plane-images.sh packs its images under these names.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := a.checkFormat(); err != nil {
				return err
			}
			v, err := kubeversion.Parse(k8s)
			if err != nil {
				return fmt.Errorf("--k8s: %w", err)
			}
			imgs := v.ControlPlaneImages(repo)
			if imgs == nil {
				return fmt.Errorf("--k8s %s: kubeadm's control-plane images are known only for 1.21 so far (layers/kubeversion)", v)
			}
			for _, t := range tags {
				component, tag, ok := strings.Cut(t, "=")
				i := -1
				for j, img := range imgs {
					if img.Component == component {
						i = j
					}
				}
				if !ok || i < 0 {
					return fmt.Errorf("--tag %q: expected COMPONENT=TAG with COMPONENT one of kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, pause, etcd, coredns", t)
				}
				imgs[i].Name = repo + "/" + component + ":" + tag
				if _, err := ociimage.ParseName(imgs[i].Name); err != nil {
					return fmt.Errorf("--tag %q: %w", t, err)
				}
			}
			for _, img := range imgs {
				if _, err := ociimage.ParseName(img.Name); err != nil {
					return fmt.Errorf("--repository %q: %w", repo, err)
				}
			}
			if a.json() {
				return a.printJSON(imgs)
			}
			tw := tabwriter.NewWriter(a.out, 0, 4, 1, ' ', 0)
			for _, img := range imgs {
				fmt.Fprintf(tw, "%s\t%s\n", img.Component, img.Name)
			}
			return tw.Flush()
		},
	}
	f := cmd.Flags()
	f.StringVar(&k8s, "k8s", "1.21.13", "Kubernetes version")
	f.StringVar(&repo, "repository", kubeversion.ControlPlaneRepository, "kubeadm's imageRepository")
	f.StringArrayVar(&tags, "tag", nil, "COMPONENT=TAG: the tag of the image built for COMPONENT (repeatable)")
	return cmd
}
