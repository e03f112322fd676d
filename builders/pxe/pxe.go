// Package pxe is the netboot target: the kernel, an initrd whose init brings up the network
// and fetches the root by digest, the root squashfs, and boot.ipxe, a ready iPXE script for a
// static setup (any HTTP server serving these files from one directory).
package pxe

import (
	"context"
	"fmt"
	"strings"

	"github.com/imgctl/imgctl/builders"
	"github.com/imgctl/imgctl/builders/initrd"
	"github.com/imgctl/imgctl/images/boot"
	"github.com/imgctl/imgctl/images/manifest"
)

// Name is the target's name on the command line and in specs.
const Name = "pxe"

// Artifact names: other tools (imgctl serve, a static web server) find the files by them.
const (
	KernelName = builders.KernelArtifactName
	InitrdName = builders.InitrdArtifactName
	RootName   = builders.RootArtifactName
	ScriptName = manifest.IPXEScriptArtifact
)

// Options configure the pxe target.
type Options struct {
	Squashfs builders.SquashfsOptions
}

// Target writes the netboot artifacts.
type Target struct{ Options Options }

// New returns the pxe target with o.
func New(o Options) *Target { return &Target{Options: o} }

// Name implements builders.Target.
func (*Target) Name() string { return Name }

// Write implements builders.Target.
func (t *Target) Write(ctx context.Context, s builders.Steps) ([]manifest.Artifact, error) {
	sqOpts, err := t.Options.Squashfs.Normalize()
	if err != nil {
		return nil, err
	}
	ird, err := s.Initrd(ctx, builders.BootInitrd)
	if err != nil {
		return nil, err
	}
	kernel, err := s.Kernel(ctx)
	if err != nil {
		return nil, err
	}
	nics := builders.Intersect(ird.Included, initrd.NICModules)
	if len(nics) == 0 {
		return nil, fmt.Errorf("kernel %s has none of the network drivers a netbooted node needs (looked for %s): use a kernel layer with NIC drivers, e.g. the metal flavor's linux-image-amd64",
			kernel.Release, strings.Join(initrd.NICModules, ", "))
	}
	root, err := s.RootSquashfs(ctx, sqOpts)
	if err != nil {
		return nil, err
	}
	st := s.Store()
	kblob, err := s.Vmlinuz(ctx)
	if err != nil {
		return nil, err
	}
	cmdline := s.Spec().Spec.Kernel.Cmdline
	script := Script(ScriptOptions{Cmdline: cmdline, RootDigest: string(root.Digest), Version: s.Spec().Metadata.Name})
	sd, ssize, err := st.WriteBlob(ctx, strings.NewReader(script), -1, "")
	if err != nil {
		return nil, err
	}
	return []manifest.Artifact{
		builders.KernelArtifact(kernel.Release, kblob),
		builders.InitrdArtifact(ird),
		builders.RootArtifact(root, sqOpts.Compression, cmdline),
		{Name: ScriptName, MediaType: manifest.IPXEScriptMediaType, Digest: sd, Size: ssize, Annotations: scriptAnnotations(root, cmdline)},
	}, nil
}

// scriptAnnotations are boot.ipxe's: the root it boots and the spec's command line.
func scriptAnnotations(root builders.RootBlob, cmdline []string) map[string]string {
	ann := builders.RootAnnotations(root)
	ann[manifest.AnnotationKernelCmdline] = strings.Join(cmdline, " ")
	return ann
}

// ScriptOptions are what boot.ipxe needs.
type ScriptOptions struct {
	Cmdline    []string // the spec's kernel command line
	RootDigest string   // sha256:HEX of rootfs.squashfs
	Version    string   // shown while booting
}

// Script is boot.ipxe for a static setup: the files are fetched relative to ${imgctl-base}
// (default http://${next-server}/, i.e. the DHCP server's next-server, over HTTP; chain it
// after `set imgctl-base http://HOST/DIR/` to serve them elsewhere). The init fetches the root
// by URL and verifies it against the digest before mounting it; EFI iPXE needs initrd= on the
// command line to hand the initrd to the kernel's EFI stub.
func Script(o ScriptOptions) string {
	var b strings.Builder
	b.WriteString("#!ipxe\n")
	fmt.Fprintf(&b, "# imgctl netboot: %s (root %s)\n", o.Version, o.RootDigest)
	b.WriteString("isset ${imgctl-base} || set imgctl-base http://${next-server}/\n")
	b.WriteString("echo imgctl: booting from ${imgctl-base}\n")
	args := append([]string{"initrd=" + InitrdName}, o.Cmdline...)
	args = append(args,
		boot.Param(boot.KeyRoot, "${imgctl-base}"+RootName),
		boot.Param(boot.KeyRootDigest, o.RootDigest),
		boot.Param(boot.KeyBootIF, "01-${netX/mac:hexhyp}"))
	fmt.Fprintf(&b, "kernel ${imgctl-base}%s %s || goto failed\n", KernelName, strings.Join(args, " "))
	fmt.Fprintf(&b, "initrd --name %s ${imgctl-base}%s || goto failed\n", InitrdName, InitrdName)
	b.WriteString("boot || goto failed\n")
	b.WriteString(":failed\necho imgctl: netboot failed, retrying in 10 seconds\nsleep 10\nchain ${imgctl-base}" + ScriptName + "\n")
	return b.String()
}
