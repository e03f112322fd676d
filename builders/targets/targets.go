// Package targets names the build targets imgctl knows and makes them from one set of options:
// the command line, a Packer plugin and a server all build through it.
package targets

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/imgctl/imgctl/builders"
	"github.com/imgctl/imgctl/builders/ami"
	"github.com/imgctl/imgctl/builders/pxe"
	"github.com/imgctl/imgctl/builders/raw"
	"github.com/imgctl/imgctl/builders/rootfs"
)

// Options are every target's options; each target reads the ones it needs.
type Options struct {
	// Squashfs is the root squashfs's compression (raw and pxe share the image).
	Squashfs builders.SquashfsOptions
	DiskSize int64 // raw: 0 = the default
	RootSize int64 // raw: size of ROOT-A and ROOT-B; 0 = the default
	// AMIPublish publishes the stored image as an AMI (ami; required by it): images/ami.Publish
	// with the AWS clients and publish options, checked before the build starts.
	AMIPublish ami.PublishFunc
}

// Info describes one target.
type Info struct {
	Name    string
	Summary string
}

// List returns the known targets in the order they are documented.
func List() []Info {
	return []Info{
		{raw.Name, "bootable GPT disk (disk.simg; --output writes disk.raw): ESP with systemd-boot, ROOT-A squashfs, empty ROOT-B, STATE"},
		{pxe.Name, "netboot set: vmlinuz, initrd.img (with NIC drivers), rootfs.squashfs, boot.ipxe"},
		{rootfs.Name, "the canonical rootfs tar (rootfs.tar)"},
		{ami.Name, "raw's disk, then published as an AMI (imgctl publish ami; needs --region and AWS credentials)"},
	}
}

// Names returns the known targets' names.
func Names() []string {
	var out []string
	for _, i := range List() {
		out = append(out, i.Name)
	}
	return out
}

// New returns the targets named, in order ("raw,pxe" lists are split; repeats are dropped).
func New(names []string, o Options) ([]builders.Target, error) {
	var out []builders.Target
	seen := map[string]bool{}
	for _, list := range names {
		for _, n := range strings.Split(list, ",") {
			n = strings.TrimSpace(n)
			if seen[n] {
				continue
			}
			seen[n] = true
			switch n {
			case raw.Name:
				out = append(out, raw.New(rawOptions(o)))
			case pxe.Name:
				out = append(out, pxe.New(pxe.Options{Squashfs: o.Squashfs}))
			case rootfs.Name:
				out = append(out, rootfs.New())
			case ami.Name:
				t, err := ami.New(ami.Options{Raw: rawOptions(o), Publish: o.AMIPublish})
				if err != nil {
					return nil, err
				}
				out = append(out, t)
			default:
				return nil, fmt.Errorf("unknown target %q (supported: %s)", n, strings.Join(Names(), ", "))
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no target given (supported: %s)", strings.Join(Names(), ", "))
	}
	return out, nil
}

// rawOptions are the raw disk's options: the raw and ami targets write the same disk.
func rawOptions(o Options) raw.Options {
	return raw.Options{DiskSize: o.DiskSize, RootSize: o.RootSize, Squashfs: o.Squashfs}
}

// ParseSize reads the raw target's disk and root sizes: 3GiB, 512MiB, 3G, 1024M or plain
// bytes; "" is 0 (the default).
func ParseSize(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	units := []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1}}
	num, mult := s, int64(1)
	for _, u := range units {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			num, mult = v, u.mult
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q: expected a size like 3GiB, 512MiB or a number of bytes", s)
	}
	return n * mult, nil
}
