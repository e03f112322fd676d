package bootinit

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/cmdline"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/dm"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/rootmark"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/steplog"
	"github.com/imgctl/imgctl/images/boot"
	"github.com/imgctl/imgctl/images/boot/verity"
)

// VerityName is the device-mapper name of the verity-mapped root.
const VerityName = "imgctl-root"

// verityRoot is the mapped root: the control device stays open to read the target's status
// should the root fail to read later in the boot.
type verityRoot struct {
	ctl    *dm.Control
	dev    uint64 // the dm device
	path   string // /dev/dm-N
	hash   string
	blocks uint64
}

// mapVerity maps the root device at devPath through dm-verity as VerityName and returns the
// mapped device: step line verity.
func mapVerity(log *steplog.Logger, devDir, devPath string, v *cmdline.Verity) (*verityRoot, error) {
	s := log.Start("verity")
	kv := []any{"device", devPath, "roothash", shortHash(v.RootHash)}
	r, err := setupVerity(devDir, devPath, v)
	if err != nil {
		return nil, s.Fail(err, kv...)
	}
	s.Done(append(kv, "blocks", r.blocks, "mapped", r.path, "offset", v.Offset)...)
	return r, nil
}

func setupVerity(devDir, devPath string, v *cmdline.Verity) (*verityRoot, error) {
	hash, err := verity.ParseRootHash(v.RootHash)
	if err != nil {
		return nil, err // cmdline checked it
	}
	blocks := uint64(v.Offset / verity.BlockSize)
	f, err := os.Open(devPath)
	if err != nil {
		return nil, fmt.Errorf("open the root device: %w", err)
	}
	var st unix.Stat_t
	err = unix.Fstat(int(f.Fd()), &st)
	if err == nil && st.Mode&unix.S_IFMT != unix.S_IFBLK {
		err = errors.New("not a block device")
	}
	// The kernel never reads the superblock: check it here, so a wrong offset or a root hash
	// for another image fails saying so rather than as an I/O error at the first read.
	sb := make([]byte, verity.BlockSize)
	if err == nil {
		if _, err = f.ReadAt(sb, v.Offset); err != nil {
			err = fmt.Errorf("read the verity superblock at %s=%d: %w", boot.KeyVerityOffset, v.Offset, err)
		}
	}
	if err == nil {
		if err = verity.CheckSuperblock(sb, blocks, hash); err != nil {
			err = fmt.Errorf("at %s=%d: %w", boot.KeyVerityOffset, v.Offset, err)
		}
	}
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", devPath, err)
	}
	ctl, err := dm.Open(devDir)
	if err != nil {
		return nil, err
	}
	if _, err := ctl.Version(); err != nil {
		ctl.Close()
		return nil, err
	}
	dev, err := ctl.MapVerity(VerityName, dm.Verity{Dev: uint64(st.Rdev), DataBlocks: blocks, HashOffset: v.Offset, RootHash: hash[:], Salt: verity.Salt})
	if err != nil {
		ctl.Close()
		return nil, err
	}
	p, err := ensureBlockNode(devDir, dev)
	if err != nil {
		ctl.Close()
		return nil, err
	}
	return &verityRoot{ctl: ctl, dev: dev, path: p, hash: v.RootHash, blocks: blocks}, nil
}

// ensureBlockNode returns devDir/dm-MINOR, creating the node when devtmpfs has not.
func ensureBlockNode(devDir string, dev uint64) (string, error) {
	p := filepath.Join(devDir, "dm-"+strconv.FormatUint(uint64(unix.Minor(dev)), 10))
	err := unix.Mknod(p, unix.S_IFBLK|0o600, int(dev))
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return "", fmt.Errorf("create %s (block %d:%d): %w", p, unix.Major(dev), unix.Minor(dev), err)
	}
	return p, nil
}

// readFailure prints the verity step's failure line when err is a read error (EIO) of the
// verity root: with the target's status, C when verity found a corrupted block.
func (r *verityRoot) readFailure(log *steplog.Logger, err error) {
	if r == nil || !errors.Is(err, unix.EIO) {
		return
	}
	kv := []any{"device", r.path, "roothash", shortHash(r.hash)}
	st, serr := r.ctl.VerityState(VerityName)
	if serr != nil {
		kv = append(kv, "dm-status", "unknown", "dm-status-err", serr.Error())
	} else {
		kv = append(kv, "dm-status", string(st))
	}
	why := "the root failed to read"
	if st == dm.VerityCorrupt {
		why = "a block of the root failed dm-verity verification (corrupted or modified)"
	}
	_ = log.Start("verity").Fail(fmt.Errorf("%s: %w", why, err), kv...)
}

// marker is what the units after the switch learn about the verity root (package rootmark):
// both overlays' upper layers, /var's whether or not STATE was mounted (a missing directory
// hides nothing).
func (r *verityRoot) marker() rootmark.Marker {
	return rootmark.Marker{RootHash: r.hash, Blocks: r.blocks, Name: VerityName,
		Major: unix.Major(r.dev), Minor: unix.Minor(r.dev), Lower: LowerDir,
		Uppers: []rootmark.Upper{{At: "/", Dir: rootUpper}, {At: "/var", Dir: varUpper}}}
}

// writeMarker leaves the marker under /run, which the switch moves into the real root.
func (r *verityRoot) writeMarker(log *steplog.Logger) error {
	s := log.Start("verity-marker")
	if err := rootmark.Write("/", r.marker()); err != nil {
		return s.Fail(err)
	}
	s.Done("path", rootmark.Path)
	return nil
}

// shortHash is the first 12 hex digits of a root hash, for step lines.
func shortHash(h string) string { return h[:min(len(h), 12)] }
