package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"math/big"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/imgctl/imgctl/builders/pxe"
	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/store"
	digest "github.com/opencontainers/go-digest"
)

// setupResult is what the script needs to know about the bench image.
type setupResult struct {
	Image        string `json:"image"`
	Version      string `json:"version"`
	Kernel       string `json:"kernel"`
	Initrd       string `json:"initrd"`
	Root         string `json:"root"`
	KernelBytes  int64  `json:"kernel_bytes"`
	InitrdBytes  int64  `json:"initrd_bytes"`
	RootBytes    int64  `json:"root_bytes"`
	Machines     int    `json:"machines"`
	Inventory    string `json:"inventory"`
	MachinesFile string `json:"machines_file"`
	PathsFile    string `json:"paths_file"`
}

// setup stores a netboot image (kernel, initrd, root squashfs and boot.ipxe, named and typed as
// the pxe target writes them) made of random bytes, and writes into -out:
//
//	inventory.yaml  the machines for imgctl serve: one group on channel -channel
//	machines.tsv    NAME MAC UUID SERIAL, one machine a line
//	ipxe.paths      the per-node script request of every machine, as iPXE sends it after boot.ipxe
//	tls.crt, tls.key  a self-signed certificate for 127.0.0.1: with it imgctl serve puts a boot
//	                credential and the certificate's pin in every node script, as in production
func setup(ctx context.Context, args []string) (any, error) {
	fs := flag.NewFlagSet("setup", flag.ContinueOnError)
	storeDir := fs.String("store", "", "the store to put the image in (created if missing)")
	out := fs.String("out", "", "directory for machines.tsv and ipxe.paths")
	machines := fs.Int("machines", 1000, "machines in the inventory")
	kernelMB := fs.Int64("kernel-mb", 8, "kernel size, MB")
	initrdMB := fs.Int64("initrd-mb", 10, "initrd size, MB")
	rootMB := fs.Int64("root-mb", 300, "root squashfs size, MB")
	version := fs.String("version", "bench-1", "the image's version")
	channel := fs.String("channel", "nightly", "the channel the inventory's machines follow")
	seed := fs.Uint64("seed", 1, "seed of the random bytes")
	if err := parse(fs, args, 0); err != nil {
		return nil, err
	}
	if *storeDir == "" || *out == "" {
		return nil, fmt.Errorf("-store and -out are required")
	}
	st, err := store.Open(ctx, *storeDir, nil)
	if err != nil {
		return nil, err
	}
	var key [32]byte
	for i := range 4 {
		for j := range 8 {
			key[i*8+j] = byte(*seed >> (8 * j))
		}
	}
	rng := rand.NewChaCha8(key)
	blob := func(mb int64) (digest.Digest, int64, error) {
		return st.WriteBlob(ctx, io.LimitReader(rng, mb*1000*1000), mb*1000*1000, "")
	}
	res := setupResult{Version: *version, Machines: *machines}
	kd, kn, err := blob(*kernelMB)
	if err != nil {
		return nil, fmt.Errorf("storing the kernel: %w", err)
	}
	id, in, err := blob(*initrdMB)
	if err != nil {
		return nil, fmt.Errorf("storing the initrd: %w", err)
	}
	rd, rn, err := blob(*rootMB)
	if err != nil {
		return nil, fmt.Errorf("storing the root: %w", err)
	}
	cmdline := []string{"console=ttyS0", "quiet"}
	script := pxe.Script(pxe.ScriptOptions{Cmdline: cmdline, RootDigest: rd.String(), Version: *version})
	sd, sn, err := st.WriteBlob(ctx, strings.NewReader(script), -1, "")
	if err != nil {
		return nil, fmt.Errorf("storing boot.ipxe: %w", err)
	}
	arts := []manifest.Artifact{
		{Name: pxe.KernelName, MediaType: manifest.KernelMediaType, Digest: kd, Size: kn,
			Annotations: map[string]string{"dev.imgctl.kernel.release": "6.1.0-bench-amd64"}},
		{Name: pxe.InitrdName, MediaType: manifest.InitrdMediaType, Digest: id, Size: in},
		{Name: pxe.RootName, MediaType: manifest.SquashfsMediaType, Digest: rd, Size: rn, Annotations: map[string]string{
			"dev.imgctl.root.compressor": "zstd",
			"dev.imgctl.kernel.cmdline":  strings.Join(cmdline, " "),
		}},
		{Name: pxe.ScriptName, MediaType: manifest.IPXEScriptMediaType, Digest: sd, Size: sn, Annotations: map[string]string{
			"dev.imgctl.kernel.cmdline": strings.Join(cmdline, " "),
			"dev.imgctl.root.digest":    rd.String(),
			"dev.imgctl.root.size":      fmt.Sprint(rn),
		}},
	}
	cfg := manifest.Config{
		SchemaVersion: manifest.SchemaVersion, Name: "node", Version: *version,
		SpecDigest: digest.FromString("bench spec " + *version), Kubernetes: "1.21.13",
		Kernel: "6.1.0-bench-amd64", Bootstrap: "0.1.0", Imgctl: "bench", SourceDateEpoch: 1700000000,
		Layers: []manifest.Layer{{Role: "base", Version: "bench", Digest: digest.FromString("bench base"), Size: 1}},
		Rootfs: manifest.Rootfs{Digest: digest.FromString("bench rootfs"), Size: 1, Entries: 1},
	}
	desc, err := st.PutImage(ctx, cfg, arts)
	if err != nil {
		return nil, err
	}
	res.Image, res.Kernel, res.Initrd, res.Root = desc.Digest.String(), kd.String(), id.String(), rd.String()
	res.KernelBytes, res.InitrdBytes, res.RootBytes = kn, in, rn

	var inv, tsv, paths bytes.Buffer
	fmt.Fprintf(&inv, `# test/bench/serve setup: %d machines of one group
apiVersion: imgctl/v1alpha1
kind: Inventory
groups:
  - name: bench
    role: node
    channel: %s
    kernelArgs: ["console=ttyS0,115200n8"]
    config:
      cluster:
        name: bench
        apiServer: https://10.0.0.10:6443
    secret: # fake: kubeadm's documentation token and an all-zero CA hash
      bootstrapToken: abcdef.0123456789abcdef
      caCertHashes: ["sha256:0000000000000000000000000000000000000000000000000000000000000000"]
machines:
`, *machines, *channel)
	for i := range *machines {
		m := benchMachine(i)
		fmt.Fprintf(&inv, "  - name: %s\n    group: bench\n    macs: [%q]\n    uuid: %s\n    serial: %s\n", m.name, m.mac, m.uuid, m.serial)
		fmt.Fprintf(&tsv, "%s\t%s\t%s\t%s\n", m.name, m.mac, m.uuid, m.serial)
		fmt.Fprintf(&paths, "%s\n", m.path())
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return nil, err
	}
	if err := writeCert(filepath.Join(*out, "tls.crt"), filepath.Join(*out, "tls.key")); err != nil {
		return nil, err
	}
	res.Inventory = filepath.Join(*out, "inventory.yaml")
	res.MachinesFile = filepath.Join(*out, "machines.tsv")
	res.PathsFile = filepath.Join(*out, "ipxe.paths")
	if err := os.WriteFile(res.Inventory, inv.Bytes(), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(res.MachinesFile, tsv.Bytes(), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(res.PathsFile, paths.Bytes(), 0o644); err != nil {
		return nil, err
	}
	return res, nil
}

type machine struct{ name, mac, uuid, serial string }

// benchMachine is machine i of the bench inventory: node-0000, 52:54:00:00:00:00, ….
func benchMachine(i int) machine {
	return machine{
		name:   fmt.Sprintf("node-%04d", i),
		mac:    fmt.Sprintf("52:54:00:%02x:%02x:%02x", i>>16&0xff, i>>8&0xff, i&0xff),
		uuid:   fmt.Sprintf("4c4c4544-0000-1000-8000-%012x", i+1),
		serial: fmt.Sprintf("BENCH%06d", i),
	}
}

// path is the request iPXE makes for the machine after the static boot.ipxe.
func (m machine) path() string {
	return "/ipxe?mac=" + m.mac + "&uuid=" + m.uuid + "&serial=" + m.serial
}

// writeCert writes a self-signed ECDSA P-256 certificate for 127.0.0.1, valid for a day.
func writeCert(certFile, keyFile string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "imgctl serve bench"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(crand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	return os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600)
}
