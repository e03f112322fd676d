package bootauth

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/imgctl/imgctl/layers/atomicfile"
	"github.com/imgctl/imgctl/layers/flock"
)

// record is the content of boots/NODE.json: the newest used boot of the node.
type record struct {
	SchemaVersion int       `json:"schemaVersion"`
	Boot          Boot      `json:"boot"`  // Addr: the bound address
	Bound         time.Time `json:"bound"` // the first use (server clock)
	// Retired is when the node reported it is configured (Retire); zero while in use.
	Retired time.Time `json:"retired,omitzero"`
}

// Authorize checks a token presented by the caller at remote and returns its boot, bound to
// remote (IPv4-mapped IPv6 addresses count as IPv4). See the package documentation for the
// rules. Refusals wrap ErrInvalidToken, ErrExpired, ErrSuperseded or ErrAddressMismatch; other
// errors are the record's I/O (or ctx ending while waiting for its lock).
func (a *Authority) Authorize(ctx context.Context, token string, remote netip.Addr) (Boot, error) {
	b, err := a.Check(token, remote)
	if err != nil {
		return Boot{}, err
	}
	caller := remote.Unmap().String()

	boots := filepath.Join(a.dir, BootsDir)
	lockPath := filepath.Join(boots, b.Node+".lock") // a node name is a safe file name
	unlock, err := flock.Lock(ctx, lockPath, 0o600, func() {
		a.log.Info("waiting for the lock on a node's boot record", "node", b.Node, "file", lockPath)
	})
	if err != nil {
		return Boot{}, fmt.Errorf("node %s: boot record: %w", b.Node, err)
	}
	defer func() { _ = unlock() }()

	path := filepath.Join(boots, b.Node+".json")
	rec, err := readRecord(path, b.Node)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return Boot{}, err
	case rec.Boot.ID == b.ID && !rec.Retired.IsZero():
		a.log.Warn("boot credential used after its node was configured: read from the node, or replayed?",
			"node", b.Node, "boot", b.ID, "bound", rec.Boot.Addr, "caller", caller, "retired", rec.Retired)
		return Boot{}, fmt.Errorf("node %s: the credential of boot %s was retired at %s when the node reported it is configured, used from %s: %w",
			b.Node, b.ID, rec.Retired.Format(time.RFC3339), caller, ErrRetired)
	case rec.Boot.ID == b.ID:
		if rec.Boot.Addr == caller {
			b.Addr = caller
			return b, nil // a retry
		}
		a.log.Warn("possible duplicate or spoofed node: boot credential used from another address than the one it is bound to",
			"node", b.Node, "boot", b.ID, "bound", rec.Boot.Addr, "caller", caller)
		return Boot{}, fmt.Errorf("node %s: the credential of boot %s is bound to %s, used from %s (possible duplicate or spoofed node): %w",
			b.Node, b.ID, rec.Boot.Addr, caller, ErrAddressMismatch)
	case older(b, rec.Boot):
		a.log.Warn("possible duplicate or spoofed node: boot credential superseded by a newer boot of the node",
			"node", b.Node, "boot", b.ID, "issued", b.Issued, "newer", rec.Boot.ID, "newerIssued", rec.Boot.Issued,
			"bound", rec.Boot.Addr, "caller", caller)
		return Boot{}, fmt.Errorf("node %s: the credential of boot %s (issued %s) is superseded by boot %s (issued %s, bound to %s), used from %s (possible duplicate or spoofed node): %w",
			b.Node, b.ID, b.Issued.Format(time.RFC3339Nano), rec.Boot.ID, rec.Boot.Issued.Format(time.RFC3339Nano),
			rec.Boot.Addr, caller, ErrSuperseded)
	}
	b.Addr = caller
	data, err := json.MarshalIndent(record{SchemaVersion: recordVers, Boot: b, Bound: a.now().UTC()}, "", "  ")
	if err != nil {
		return Boot{}, err
	}
	if err := atomicfile.Write("", path, append(data, '\n'), 0o600); err != nil {
		return Boot{}, fmt.Errorf("node %s: writing boot record %s: %w", b.Node, path, err)
	}
	return b, nil
}

// Retire ends boot b's credential (b as Authorize returned it): every later use is refused
// with ErrRetired. The server calls it when the node reports that configuration succeeded, so
// the credential left in the node's /proc/cmdline opens nothing. A boot that is not its node's
// newest used boot is left alone (a newer one has superseded it already).
func (a *Authority) Retire(ctx context.Context, b Boot) error {
	if err := checkBoot(&b); err != nil {
		return fmt.Errorf("retiring a boot credential: %w", err)
	}
	boots := filepath.Join(a.dir, BootsDir)
	unlock, err := flock.Lock(ctx, filepath.Join(boots, b.Node+".lock"), 0o600, nil)
	if err != nil {
		return fmt.Errorf("node %s: boot record: %w", b.Node, err)
	}
	defer func() { _ = unlock() }()
	path := filepath.Join(boots, b.Node+".json")
	rec, err := readRecord(path, b.Node)
	if err != nil || rec.Boot.ID != b.ID || !rec.Retired.IsZero() {
		if errors.Is(err, fs.ErrNotExist) {
			err = nil
		}
		return err
	}
	rec.Retired = a.now().UTC()
	data, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write("", path, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("node %s: writing boot record %s: %w", b.Node, path, err)
	}
	return nil
}

// Check verifies a token's signature, fields and expiry, as Authorize does first, and
// returns its boot without reading or changing any record: the caller can apply its own rules
// (a machine's allowed addresses) before Authorize binds the credential to remote. Refusals
// wrap ErrInvalidToken or ErrExpired.
func (a *Authority) Check(token string, remote netip.Addr) (Boot, error) {
	remote = remote.Unmap()
	if !remote.IsValid() {
		return Boot{}, errors.New("authorizing a boot credential: no caller address")
	}
	caller := remote.String()
	b, err := a.parse(token)
	if err != nil {
		return Boot{}, fmt.Errorf("boot credential used from %s: %w", caller, err)
	}
	if now := a.now(); !now.Before(b.Expires) {
		return Boot{}, fmt.Errorf("node %s: the credential of boot %s expired at %s (used from %s): %w",
			b.Node, b.ID, b.Expires.Format(time.RFC3339), caller, ErrExpired)
	}
	return b, nil
}

// older reports whether boot b was issued before boot than (ties: the smaller boot ID), the
// same order on every replica.
func older(b, than Boot) bool {
	if !b.Issued.Equal(than.Issued) {
		return b.Issued.Before(than.Issued)
	}
	return b.ID < than.ID
}

// readRecord reads and checks boots/NODE.json.
func readRecord(path, node string) (record, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return record{}, err
		}
		return record{}, fmt.Errorf("node %s: reading boot record: %w", node, err)
	}
	bad := func(format string, args ...any) (record, error) {
		return record{}, fmt.Errorf("boot record %s: %s; it is left as it is: remove it to accept the node's next boot", path, fmt.Sprintf(format, args...))
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var r record
	if err := dec.Decode(&r); err != nil {
		return bad("%v", err)
	}
	if r.SchemaVersion != recordVers {
		return bad("schemaVersion %d (expected %d)", r.SchemaVersion, recordVers)
	}
	if r.Boot.Node != node {
		return bad("boot.node %q (expected %q)", r.Boot.Node, node)
	}
	if id, err := hex.DecodeString(r.Boot.ID); err != nil || len(id) != idLen {
		return bad("boot.id %q (expected %d hex digits)", r.Boot.ID, 2*idLen)
	}
	if addr, err := netip.ParseAddr(r.Boot.Addr); err != nil || addr.String() != r.Boot.Addr {
		return bad("boot.addr %q (expected an IP address)", r.Boot.Addr)
	}
	if r.Boot.Issued.IsZero() {
		return bad("boot.issued missing")
	}
	return r, nil
}
