package install

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// swapOff turns off every swap area /proc/swaps lists: the kubelet (failSwapOn, the default)
// refuses to start while swap is on. The paths are the kernel's, passed to Swapoff as listed.
func (in *installer) swapOff(ctx context.Context) (result, error) {
	p := in.path("/proc/swaps")
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		// No /proc/swaps: a kernel built without swap support.
		return result{skip: true, kv: []any{"reason", "no /proc/swaps"}}, nil
	}
	if err != nil {
		return result{}, fmt.Errorf("reading active swaps: %w", err)
	}
	swaps, err := parseSwaps(data)
	if err != nil {
		return result{}, fmt.Errorf("%s: %w", p, err)
	}
	if len(swaps) == 0 {
		return result{skip: true, kv: []any{"reason", "no active swap"}}, nil
	}
	var errs []error
	for _, s := range swaps {
		if err := in.swapoffOne(ctx, s); err != nil {
			errs = append(errs, err)
		}
	}
	kv := []any{"swaps", len(swaps)}
	if len(errs) > 0 {
		return result{kv: append(kv, "failed", len(errs))}, errors.Join(errs...)
	}
	return result{kv: kv}, nil
}

// swapoffOne turns off one swap area with the syscall and, should that fail, with swapoff(8)
// through the runner; the error carries both failures.
func (in *installer) swapoffOne(ctx context.Context, path string) error {
	err := in.swapoff(path)
	if err == nil {
		in.log.Info("swap turned off", "path", path)
		return nil
	}
	in.log.Warn("swapoff failed; trying swapoff(8)", "path", path, "err", err)
	if err2 := in.run(ctx, "swapoff", "--", path); err2 != nil {
		return fmt.Errorf("swapoff %s: %w (then %w)", path, err, err2)
	}
	in.log.Info("swap turned off by swapoff(8)", "path", path)
	return nil
}

// swapoffSyscall is swapoff(2).
func swapoffSyscall(path string) error {
	p, err := unix.BytePtrFromString(path)
	if err != nil {
		return fmt.Errorf("swapoff %q: %w", path, err)
	}
	if _, _, errno := unix.Syscall(unix.SYS_SWAPOFF, uintptr(unsafe.Pointer(p)), 0, 0); errno != 0 {
		return os.NewSyscallError("swapoff", errno)
	}
	return nil
}

// parseSwaps returns the file names in /proc/swaps, skipping its header and undoing the
// kernel's octal escapes (a space is \040).
func parseSwaps(data []byte) ([]string, error) {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for first := true; sc.Scan(); first = false {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || first && fields[0] == "Filename" {
			continue
		}
		name, err := unescapeOctal(fields[0])
		if err != nil {
			return nil, err
		}
		out = append(out, name)
	}
	return out, sc.Err()
}

// unescapeOctal decodes the \NNN escapes seq_file uses for blanks and backslashes in paths.
func unescapeOctal(s string) (string, error) {
	if !strings.Contains(s, `\`) {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b.WriteByte(s[i])
			continue
		}
		if i+4 > len(s) {
			return "", fmt.Errorf("bad escape in %q", s)
		}
		v, err := strconv.ParseUint(s[i+1:i+4], 8, 8)
		if err != nil {
			return "", fmt.Errorf("bad escape in %q", s)
		}
		b.WriteByte(byte(v))
		i += 3
	}
	return b.String(), nil
}
