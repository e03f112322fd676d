package publication

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/store"
	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// maxRecord bounds a record's JSON; maxHashes its block hash list (a million data blocks of
// 512 KiB, 512 GiB of data, is 40 MB).
const (
	maxRecord = 1 << 20
	maxHashes = 64 << 20
)

// Put stores r as a referrer of the image r.Image in st: an OCI image manifest of artifact
// type ArtifactType whose config is r as JSON and whose one layer, if r.Hashes is set, is the
// block hash list. The image must be in st. An empty Name or Version is taken from the image
// (a Name that differs from the image's is refused: Previous finds an image's family by it),
// a zero Published is now. Records are never rewritten: a later Put of the same image
// supersedes the earlier ones (see List); putting an identical record again changes nothing.
func Put(ctx context.Context, st *store.Store, r Record) (ocispec.Descriptor, error) {
	fail := func(err error) (ocispec.Descriptor, error) {
		return ocispec.Descriptor{}, fmt.Errorf("storing the publication record of image %s in %s: %w", r.Image, r.Region, err)
	}
	if err := r.Image.Validate(); err != nil {
		return fail(fmt.Errorf("image digest %q: %w", r.Image, err))
	}
	img, err := st.Resolve(ctx, r.Image.String())
	if err != nil {
		return fail(err)
	}
	if r.Name == "" {
		r.Name = img.Config.Name
	}
	if r.Name != img.Config.Name {
		return fail(fmt.Errorf("name %q, but the image's name is %q", r.Name, img.Config.Name))
	}
	if r.Version == "" {
		r.Version = img.Config.Version
	}
	if r.Published.IsZero() {
		r.Published = time.Now()
	}
	r.Published = r.Published.UTC()
	if err := r.check(); err != nil {
		return fail(err)
	}

	config, err := json.Marshal(r)
	if err != nil {
		return fail(err)
	}
	cd, cn, err := st.WriteBlob(ctx, bytes.NewReader(config), int64(len(config)), "")
	if err != nil {
		return fail(fmt.Errorf("record: %w", err))
	}
	m := ocispec.Manifest{
		Versioned:    specs.Versioned{SchemaVersion: 2},
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: ArtifactType,
		Config:       ocispec.Descriptor{MediaType: ArtifactType, Digest: cd, Size: cn},
		Subject:      &ocispec.Descriptor{MediaType: img.Descriptor.MediaType, Digest: img.Digest(), Size: img.Descriptor.Size},
		Annotations:  map[string]string{ocispec.AnnotationCreated: r.Published.Format(time.RFC3339Nano)},
	}
	if r.Hashes != nil {
		data, err := r.Hashes.MarshalBinary()
		if err != nil {
			return fail(err)
		}
		// What cannot be read back must not be stored.
		if err := new(Hashes).UnmarshalBinary(data); err != nil {
			return fail(err)
		}
		hd, hn, err := st.WriteBlob(ctx, bytes.NewReader(data), int64(len(data)), "")
		if err != nil {
			return fail(fmt.Errorf("block hashes: %w", err))
		}
		m.Layers = []ocispec.Descriptor{{MediaType: HashesMediaType, Digest: hd, Size: hn}}
	} else {
		// OCI 1.1 artifacts without content carry the empty descriptor as their one layer.
		empty := ocispec.DescriptorEmptyJSON
		empty.Data = nil
		if _, _, err := st.WriteBlob(ctx, bytes.NewReader([]byte("{}")), empty.Size, empty.Digest); err != nil {
			return fail(fmt.Errorf("empty layer: %w", err))
		}
		m.Layers = []ocispec.Descriptor{empty}
	}
	data, err := manifest.EncodeManifest(m)
	if err != nil {
		return fail(err)
	}
	desc, err := st.PutReferrer(ctx, data)
	if err != nil {
		return fail(err)
	}
	return desc, nil
}

// check validates what Put is given: a record others can rely on.
func (r *Record) check() error {
	if r.Region == "" {
		return errors.New("no region")
	}
	if err := r.State.check(); err != nil {
		return err
	}
	for i, g := range r.Regions {
		if g.Region == "" {
			return fmt.Errorf("regions[%d]: no region", i)
		}
		if err := g.State.check(); err != nil {
			return fmt.Errorf("regions[%d] (%s): %w", i, g.Region, err)
		}
	}
	if len(r.Regions) > 0 && r.Regions[0].Region != r.Region {
		return fmt.Errorf("regions[0] is %s, but the disk was uploaded to %s (the upload region comes first)", r.Regions[0].Region, r.Region)
	}
	return nil
}

func (s State) check() error {
	switch s {
	case StateUploading, StateSnapshot, StateRegistered, StateAvailable, StateFailed:
		return nil
	}
	return fmt.Errorf("state %q (expected %s, %s, %s, %s or %s)", s,
		StateUploading, StateSnapshot, StateRegistered, StateAvailable, StateFailed)
}

// List returns the publication records of image img in st, newest first (by Published, then
// the later stored first), without their hashes (see LoadHashes). A record that cannot be read
// is an error naming it.
func List(ctx context.Context, st *store.Store, img digest.Digest) ([]Record, error) {
	refs, err := st.Referrers(ctx, img, ArtifactType)
	if err != nil {
		return nil, fmt.Errorf("listing the publication records of image %s: %w", img, err)
	}
	out := make([]Record, 0, len(refs))
	for i := len(refs) - 1; i >= 0; i-- { // later stored first, kept by the stable sort
		r, err := readRecord(ctx, st, img, refs[i])
		if err != nil {
			return nil, fmt.Errorf("listing the publication records of image %s: record %s: %w (run `imgctl store verify`)",
				img, refs[i].Descriptor.Digest, err)
		}
		out = append(out, r)
	}
	slices.SortStableFunc(out, func(a, b Record) int { return b.Published.Compare(a.Published) })
	return out, nil
}

func readRecord(ctx context.Context, st *store.Store, img digest.Digest, ref store.Referrer) (Record, error) {
	c := ref.Manifest.Config
	if c.MediaType != ArtifactType {
		return Record{}, fmt.Errorf("config of media type %q, expected %s", c.MediaType, ArtifactType)
	}
	data, err := readBlob(ctx, st, c, maxRecord)
	if err != nil {
		return Record{}, fmt.Errorf("config: %w", err)
	}
	var r Record
	if err := json.Unmarshal(data, &r); err != nil {
		return Record{}, fmt.Errorf("config %s: %w", c.Digest, err)
	}
	if r.Image != img {
		return Record{}, fmt.Errorf("config %s: the record is of image %q, not of its subject", c.Digest, r.Image)
	}
	r.stored = ref.Descriptor.Digest
	for _, l := range ref.Manifest.Layers {
		if l.MediaType == HashesMediaType {
			r.hashes = l
		}
	}
	return r, nil
}

// readBlob reads and checks the blob d names, of at most max bytes.
func readBlob(ctx context.Context, st *store.Store, d ocispec.Descriptor, max int64) ([]byte, error) {
	if d.Size < 0 || d.Size > max {
		return nil, fmt.Errorf("blob %s of %d bytes (at most %d accepted)", d.Digest, d.Size, max)
	}
	rc, err := st.OpenBlob(ctx, d.Digest)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rc.Close() }()
	data, err := io.ReadAll(io.LimitReader(rc, d.Size+1))
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", d.Digest, err)
	}
	if int64(len(data)) != d.Size || d.Digest.Validate() != nil || d.Digest.Algorithm().FromBytes(data) != d.Digest {
		return nil, fmt.Errorf("blob %s: not the %d bytes its descriptor names: %w", d.Digest, d.Size, store.ErrDigestMismatch)
	}
	return data, nil
}

// Latest returns the newest record of image img that covers region (uploaded or copied
// there; "" = any), without its hashes, or nil, nil if there is none.
func Latest(ctx context.Context, st *store.Store, img digest.Digest, region string) (*Record, error) {
	rs, err := List(ctx, st, img)
	if err != nil {
		return nil, err
	}
	for _, r := range rs {
		if region == "" || r.covers(region) {
			return &r, nil
		}
	}
	return nil, nil
}

func (r *Record) covers(region string) bool {
	_, ok := r.RegionState(region)
	return ok || r.Region == region
}

// Previous returns the newest record of another image than exclude of the same name in st
// that was uploaded to region, whose snapshot was completed there (state snapshot, registered
// or available) and that has block hashes, with the hashes loaded: an incremental upload's
// parent. Only the images still in st count. It returns nil, nil if there is none.
func Previous(ctx context.Context, st *store.Store, name, region string, exclude digest.Digest) (*Record, error) {
	imgs, err := st.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("finding the previous publication of %s in %s: %w", name, region, err)
	}
	var best *Record
	for _, img := range imgs {
		if img.Config.Name != name || img.Digest() == exclude {
			continue
		}
		rs, err := List(ctx, st, img.Digest())
		if err != nil {
			return nil, fmt.Errorf("finding the previous publication of %s in %s: %w", name, region, err)
		}
		for _, r := range rs {
			if r.Region != region || r.hashes.Digest == "" || r.Snapshot.ID == "" || !r.completed() {
				continue
			}
			if best == nil || r.Published.After(best.Published) {
				best = &r
			}
			break // List is newest first
		}
	}
	if best == nil {
		return nil, nil
	}
	if err := LoadHashes(ctx, st, best); err != nil {
		return nil, fmt.Errorf("finding the previous publication of %s in %s: %w", name, region, err)
	}
	return best, nil
}

// completed reports whether the record's snapshot was completed in the upload region.
func (r *Record) completed() bool {
	s := r.State
	if g, ok := r.RegionState(r.Region); ok {
		s = g.State
	}
	return s == StateSnapshot || s == StateRegistered || s == StateAvailable
}

// LoadHashes reads the block hashes of r, a record returned by List, Latest or Previous, into
// r.Hashes. A record stored without hashes is an error.
func LoadHashes(ctx context.Context, st *store.Store, r *Record) error {
	switch {
	case r.stored == "":
		return fmt.Errorf("loading the block hashes of image %s's publication in %s: the record was not read from the store", r.Image, r.Region)
	case r.hashes.Digest == "":
		return fmt.Errorf("loading the block hashes of image %s's publication in %s: record %s has no block hashes", r.Image, r.Region, r.stored)
	}
	data, err := readBlob(ctx, st, r.hashes, maxHashes)
	if err == nil {
		h := new(Hashes)
		if err = h.UnmarshalBinary(data); err == nil {
			r.Hashes = h
			return nil
		}
	}
	return fmt.Errorf("loading the block hashes of image %s's publication in %s: record %s: %w (run `imgctl store verify`)", r.Image, r.Region, r.stored, err)
}

// ByRegion is where an image's AMIs are, from its records rs (as List returns them, newest
// first): for each region, its entry in the newest record covering it, with the upload
// region's snapshot filled in from the record. Regions come in the order they first appear.
func ByRegion(rs []Record) []Region {
	seen := map[string]bool{}
	var out []Region
	for _, r := range rs {
		gs := r.Regions
		if len(gs) == 0 { // a record written before any AMI: the upload alone
			gs = []Region{{Region: r.Region, State: r.State, Message: r.Message}}
		}
		for _, g := range gs {
			if seen[g.Region] {
				continue
			}
			seen[g.Region] = true
			if g.Region == r.Region && g.SnapshotID == "" {
				g.SnapshotID = r.Snapshot.ID
			}
			out = append(out, g)
		}
	}
	return out
}

// All returns the records of every image in st that can be read (List's order within each
// image): what the store says was published, e.g. to find the regions to clean.
func All(ctx context.Context, st *store.Store) ([]Record, error) {
	imgs, _, err := st.ListAll(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing publication records: %w", err)
	}
	var out []Record
	for _, img := range imgs {
		rs, err := List(ctx, st, img.Digest())
		if err != nil {
			return nil, err
		}
		out = append(out, rs...)
	}
	return out, nil
}

// Places are the regions rs were uploaded or copied to and the SSM prefixes they wrote
// version parameters under, each sorted and once.
func Places(rs []Record) (regions, ssmPrefixes []string) {
	for _, r := range rs {
		regions = append(regions, r.Region)
		for _, g := range r.Regions {
			regions = append(regions, g.Region)
		}
		if r.SSMPrefix != "" {
			ssmPrefixes = append(ssmPrefixes, r.SSMPrefix)
		}
	}
	slices.Sort(regions)
	slices.Sort(ssmPrefixes)
	return slices.Compact(regions), slices.Compact(ssmPrefixes)
}
