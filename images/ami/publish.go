package ami

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/imgctl/imgctl/images/awsclient"
	"github.com/imgctl/imgctl/images/ebssnap"
	"github.com/imgctl/imgctl/images/importsnap"
	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/publication"
	"github.com/imgctl/imgctl/images/sparse"
	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/layers/progress"
)

// Result of Publish.
type Result struct {
	// Record is the publication as last stored with the image (publication.Put).
	Record publication.Record
	// Reused: nothing was uploaded, the snapshot (or AMI) was found by its imgctl:image tag.
	Reused bool
	// Upload are the EBS direct upload's numbers; nil when reused or imported.
	Upload *ebssnap.Result
}

// Publish makes img's disk.simg an AMI in o.Region and in every o.CopyTo region, shared as
// o says, and stores a publication record with the image after every state change, so an
// interrupted run shows how far it got and leaves only tagged pieces. It returns once every
// region's AMI is available (the record's state is then StateAvailable) or with an error
// saying which region and AMI are not, each wait bounded by o.Wait. A rerun finds the
// snapshot and AMIs of an earlier run by their imgctl:image tag and only does what is
// missing.
func Publish(ctx context.Context, st *store.Store, img store.Image, c *awsclient.Clients, o Options) (Result, error) {
	o, err := o.withDefaults()
	if err != nil {
		return Result{}, err
	}
	d, err := disk(img)
	if err != nil {
		return Result{}, err
	}
	name, err := publication.AMIName(o.NamePrefix, img.Config.Version)
	if err != nil {
		return Result{}, err
	}
	param := ""
	if o.SSMPrefix != "" {
		if param, err = publication.VersionParameter(o.SSMPrefix, img.Config.Version); err != nil {
			return Result{}, err
		}
	}
	p := &publisher{
		st: st, img: img, disk: d, c: c, o: o, name: name, param: param,
		description: fmt.Sprintf("imgctl %s %s (%s)", img.Config.Name, img.Config.Version, img.Digest()),
		tags:        identityTags(img, o.Tool),
		log:         o.Logger.With("image", img.Config.Version, "region", o.Region),
	}
	p.rec = publication.Record{
		Image: img.Digest(), Name: img.Config.Name, Version: img.Config.Version, Method: o.Method,
		Region: o.Region, Regions: []publication.Region{{Region: o.Region, State: publication.StateUploading}},
		Shared: o.Share, Public: o.Public, Encrypted: o.Encrypted, KMSKeyID: o.KMSKeyID, SSMPrefix: o.SSMPrefix,
		State: publication.StateUploading,
	}
	for _, r := range o.CopyTo {
		p.rec.Regions = append(p.rec.Regions, publication.Region{Region: r, State: publication.StateUploading})
	}
	err = p.run(ctx)
	p.mu.Lock()
	defer p.mu.Unlock()
	return Result{Record: p.rec, Reused: p.reused, Upload: p.upload}, err
}

// publisher is one Publish call.
type publisher struct {
	st          *store.Store
	img         store.Image
	disk        manifest.Artifact
	c           *awsclient.Clients
	o           Options
	name, param string
	description string
	tags        map[string]string
	log         *slog.Logger

	mu     sync.Mutex // guards what follows (copies run in parallel)
	rec    publication.Record
	saved  []byte // the last record stored, as JSON without Published
	reused bool
	upload *ebssnap.Result
}

func (p *publisher) run(ctx context.Context) error {
	home := p.o.Region
	prev, err := publication.Latest(ctx, p.st, p.img.Digest(), home)
	if err != nil {
		return err
	}
	if prev != nil {
		p.saved = comparable(*prev)
	}
	// What earlier runs left on AWS, region by region.
	found := make([]foundAMI, len(p.rec.Regions))
	errs := make([]error, len(found))
	var wg sync.WaitGroup
	for i, g := range p.rec.Regions {
		wg.Go(func() { found[i], errs[i] = p.find(ctx, g.Region) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	snapID := found[0].snapshot
	p.reused = snapID != "" && found[0].state != publication.StateUploading
	if p.reused {
		p.log.Info("found the snapshot of an earlier run: nothing to upload", "snapshot", snapID, "ami", found[0].image)
		if err := p.reuse(ctx, prev, snapID); err != nil {
			return err
		}
	}
	for i := range found {
		p.seed(found[i], prev)
	}
	if p.reused && prev != nil {
		// Regions an earlier run copied to and this one does not name stay in the record.
		for _, g := range prev.Regions {
			if _, ok := p.rec.RegionState(g.Region); !ok && g.ImageID != "" {
				p.rec.Regions = append(p.rec.Regions, g)
			}
		}
	}
	if err := p.save(ctx); err != nil {
		return err
	}
	if !p.reused {
		if err := p.uploadDisk(ctx); err != nil {
			return err
		}
		p.mu.Lock()
		for i := range p.rec.Regions {
			g := &p.rec.Regions[i]
			if g.Region == home {
				g.SnapshotID = p.rec.Snapshot.ID
			}
			if g.ImageID == "" {
				g.State = publication.StateSnapshot
			}
		}
		p.mu.Unlock()
		if err := p.save(ctx); err != nil {
			return err
		}
	}

	imageID := found[0].image
	if imageID == "" {
		imageID, err = register(ctx, p.c.EC2(home), home, registration{
			Name: p.name, Description: p.description, SnapshotID: p.rec.Snapshot.ID,
			VolumeGiB: p.rec.Snapshot.VolumeSize, Tags: p.tags,
		})
		if imageID == "" && err != nil {
			return err
		}
		p.log.Info("registered AMI", "ami", imageID)
		p.setRegion(home, func(g *publication.Region) { g.ImageID, g.State = imageID, publication.StateRegistered })
		if serr := p.save(ctx); serr != nil || err != nil {
			return errors.Join(err, serr)
		}
	}
	if err := p.finish(ctx, home, imageID, p.rec.Snapshot.ID); err != nil {
		return err
	}

	errs = make([]error, len(found))
	for i := 1; i < len(found); i++ {
		wg.Go(func() { errs[i] = p.copyTo(ctx, found[i].region, found[i].image, imageID) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// foundAMI is what an earlier run left in a region: an AMI tagged with the image (image,
// state registered or available) and its snapshot.
type foundAMI struct {
	region, image, snapshot string
	state                   publication.State
}

// find looks for the image's AMI and snapshot in region. A failed AMI of this very image is
// useless and holds the name: it is deregistered.
func (p *publisher) find(ctx context.Context, region string) (foundAMI, error) {
	id, snap, state, err := Find(ctx, p.c, region, p.img.Digest())
	if err != nil {
		return foundAMI{}, err
	}
	if id != "" && state == publication.StateFailed {
		p.log.Warn("deregistering the failed AMI of an earlier run", "region", region, "ami", id)
		if err := deregister(ctx, p.c.EC2(region), region, id); err != nil {
			return foundAMI{}, err
		}
		id, state = "", publication.StateSnapshot
		if snap == "" {
			state = ""
		}
	}
	return foundAMI{region: region, image: id, snapshot: snap, state: state}, nil
}

// seed sets the record's entry for f.region from what was found there. An AMI is available
// (shared, its parameter written) only if the earlier record said so of that same AMI; the
// steps after it are redone anyway.
func (p *publisher) seed(f foundAMI, prev *publication.Record) {
	p.setRegion(f.region, func(g *publication.Region) {
		switch {
		case f.image != "":
			g.ImageID, g.State = f.image, publication.StateRegistered
			if f.region != p.o.Region {
				g.SnapshotID = f.snapshot
			}
			if pg, ok := prevRegion(prev, f.region); ok && pg.ImageID == f.image && pg.State == publication.StateAvailable && f.state == publication.StateAvailable {
				g.State, g.Parameter, g.SnapshotID = publication.StateAvailable, pg.Parameter, pg.SnapshotID
			}
		case p.reused:
			g.State = publication.StateSnapshot
		}
		if f.region == p.o.Region && p.reused {
			g.SnapshotID = p.rec.Snapshot.ID
		}
	})
}

func prevRegion(prev *publication.Record, region string) (publication.Region, bool) {
	if prev == nil {
		return publication.Region{}, false
	}
	return prev.RegionState(region)
}

// reuse fills the record's snapshot from the image's earlier record when it names snapID
// (with its block hashes, for the next incremental upload), else from AWS.
func (p *publisher) reuse(ctx context.Context, prev *publication.Record, snapID string) error {
	if prev != nil && prev.Snapshot.ID == snapID {
		p.rec.Snapshot = prev.Snapshot
		p.rec.Method = prev.Method
		if err := publication.LoadHashes(ctx, p.st, prev); err == nil {
			p.rec.Hashes = prev.Hashes
		} else {
			p.log.Debug("the earlier record has no block hashes", "err", err)
		}
		return nil
	}
	out, err := p.c.EC2(p.o.Region).DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{SnapshotIds: []string{snapID}})
	if err != nil {
		return fmt.Errorf("reading snapshot %s in %s (ec2:DescribeSnapshots): %w", snapID, p.o.Region, err)
	}
	p.rec.Snapshot = publication.Snapshot{ID: snapID, BlockSize: publication.BlockSize}
	if len(out.Snapshots) == 1 {
		s := out.Snapshots[0]
		p.rec.Snapshot.VolumeSize = int64(aws.ToInt32(s.VolumeSize))
		p.rec.Snapshot.Blocks = p.rec.Snapshot.VolumeSize << 30 / publication.BlockSize
		p.rec.Snapshot.Parent = tagValue(s.Tags, publication.TagParent)
	}
	return nil
}

// uploadDisk writes the disk to a new snapshot and waits until it is completed.
func (p *publisher) uploadDisk(ctx context.Context) error {
	f, src, err := p.openDisk(ctx)
	if err != nil {
		return err
	}
	defer f.Close()
	if p.o.Method == publication.MethodImportSnapshot {
		return p.importDisk(ctx, src)
	}
	return p.uploadEBS(ctx, src)
}

// uploadEBS writes the disk with the EBS direct APIs, on top of the previous publication's
// snapshot when there is one.
func (p *publisher) uploadEBS(ctx context.Context, src *sparse.Reader) error {
	home := p.o.Region
	// Tagged uploading until completed: gc --aws removes what an interrupted run leaves.
	tags := maps.Clone(p.tags)
	tags[publication.TagState] = publication.TagStateUploading
	uo := ebssnap.Options{
		Concurrency: p.o.Concurrency, Encrypted: p.o.Encrypted, KMSKeyARN: p.o.KMSKeyID,
		Tags: tags, Description: p.description, Logger: p.o.Logger,
	}
	parent, err := p.parent(ctx)
	if err != nil {
		return err
	}
	if parent != nil {
		uo.Parent, uo.ParentHashes = parent.Snapshot.ID, parent.Hashes
		tags[publication.TagParent] = parent.Snapshot.ID
	}
	res, err := ebssnap.Upload(ctx, p.c.EBS(home), src, uo)
	if err != nil {
		return p.failed(ctx, err)
	}
	p.upload = &res
	snapID := res.SnapshotID
	p.rec.Hashes = res.Hashes
	p.rec.Snapshot = publication.Snapshot{ID: snapID, VolumeSize: res.VolumeSize, BlockSize: publication.BlockSize,
		Blocks: res.Blocks, DataBlocks: res.DataBlocks, Sent: res.Sent, BytesSent: res.BytesSent}
	if parent != nil {
		p.rec.Snapshot.Parent, p.rec.Snapshot.ParentFrom = parent.Snapshot.ID, parent.Image.String()
	}
	p.log.Info("uploaded snapshot", "snapshot", snapID, "sent", res.Sent, "blocks", res.Blocks, "parent", uo.Parent, "took", res.Duration)
	ec2c := p.c.EC2(home)
	step := progress.Start(ctx, "wait for snapshot "+snapID+" in "+home)
	err = ebssnap.WaitCompleted(ctx, ec2c, snapID, p.o.Wait, p.o.Poll)
	step.Done(err)
	if err != nil {
		// The reason a snapshot failed on AWS's side is in its state message.
		if out, derr := ec2c.DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{SnapshotIds: []string{snapID}}); derr == nil &&
			len(out.Snapshots) == 1 && out.Snapshots[0].State == types.SnapshotStateError {
			msg := aws.ToString(out.Snapshots[0].StateMessage)
			if msg == "" {
				msg = "no reason given"
			}
			err = fmt.Errorf("snapshot %s in %s failed on AWS's side: %s (nothing registered)", snapID, home, msg)
		}
		return p.failed(ctx, err)
	}
	if err := tagResource(ctx, ec2c, home, snapID, map[string]string{publication.TagState: publication.TagStateComplete}); err != nil {
		return p.failed(ctx, err)
	}
	return nil
}

// importDisk writes the expanded disk to S3 and imports it as a snapshot (importsnap waits
// for the import and tags the snapshot).
func (p *publisher) importDisk(ctx context.Context, src *sparse.Reader) error {
	home := p.o.Region
	res, err := importsnap.Upload(ctx, p.c, home, src, src.Size(), importsnap.Options{
		Bucket: p.o.Bucket, Key: "imgctl/" + p.img.Digest().Encoded() + ".raw", Tags: p.tags,
		Description: p.description, Encrypted: p.o.Encrypted, KMSKeyID: p.o.KMSKeyID,
		Wait: p.o.Wait, Poll: p.o.Poll, Logger: p.o.Logger,
	})
	if err != nil {
		return p.failed(ctx, err)
	}
	size := src.Size()
	p.rec.Snapshot = publication.Snapshot{ID: res.SnapshotID, VolumeSize: (size + 1<<30 - 1) >> 30, BlockSize: publication.BlockSize,
		Blocks: ((size + 1<<30 - 1) >> 30 << 30) / publication.BlockSize, BytesSent: res.Bytes}
	p.log.Info("imported snapshot", "snapshot", res.SnapshotID, "bytes", res.Bytes, "took", res.Duration)
	return nil
}

// openDisk opens the disk.simg blob after checking its digest (the upload reads it by
// offset, which the store does not verify).
func (p *publisher) openDisk(ctx context.Context) (*os.File, *sparse.Reader, error) {
	rc, err := p.st.OpenBlob(ctx, p.disk.Digest)
	if err != nil {
		return nil, nil, fmt.Errorf("image %s: %s: %w", p.img.Config.Version, DiskArtifact, err)
	}
	_, err = io.Copy(io.Discard, rc)
	rc.Close()
	if err != nil {
		return nil, nil, fmt.Errorf("image %s: %s: %w", p.img.Config.Version, DiskArtifact, err)
	}
	path, err := p.st.BlobPath(p.disk.Digest)
	if err != nil {
		return nil, nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("image %s: %s: %w", p.img.Config.Version, DiskArtifact, err)
	}
	src, err := sparse.Open(f, p.disk.Size)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("image %s: %s (%s): %w", p.img.Config.Version, DiskArtifact, path, err)
	}
	return f, src, nil
}

// parent returns the publication an incremental upload starts from: the previous image of
// the same name uploaded to this region, encrypted the same way, whose snapshot is still
// completed there. nil: upload everything.
func (p *publisher) parent(ctx context.Context) (*publication.Record, error) {
	prev, err := publication.Previous(ctx, p.st, p.img.Config.Name, p.o.Region, p.img.Digest())
	if err != nil || prev == nil {
		return nil, err
	}
	switch {
	case prev.Encrypted != p.o.Encrypted || prev.KMSKeyID != p.o.KMSKeyID:
		p.log.Info("full upload: the previous publication is encrypted differently", "previous", prev.Version)
		return nil, nil
	case prev.Hashes == nil || prev.Hashes.BlockSize != publication.BlockSize:
		return nil, nil
	}
	out, err := p.c.EC2(p.o.Region).DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{SnapshotIds: []string{prev.Snapshot.ID}})
	if err != nil || len(out.Snapshots) != 1 || out.Snapshots[0].State != types.SnapshotStateCompleted {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		p.log.Info("full upload: the previous publication's snapshot is gone", "previous", prev.Version, "snapshot", prev.Snapshot.ID, "err", err)
		return nil, nil
	}
	return prev, nil
}

// failed records that the upload region failed with err, and returns err.
func (p *publisher) failed(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		// Interrupted: the record of the last state change stays.
		return err
	}
	p.setRegion(p.o.Region, func(g *publication.Region) { g.State, g.Message = publication.StateFailed, err.Error() })
	return errors.Join(err, p.save(ctx))
}

// finish waits until AMI id in region is available, then shares it and writes the version
// parameter there, recording each step.
func (p *publisher) finish(ctx context.Context, region, id, snapID string) error {
	e := p.c.EC2(region)
	rootSnap, err := waitImage(ctx, e, region, id, p.o.Wait, p.o.Poll)
	if err != nil {
		var se *stateError
		if errors.As(err, &se) && !se.timeout {
			p.setRegion(region, func(g *publication.Region) { g.State, g.Message = publication.StateFailed, err.Error() })
		} else if ctx.Err() == nil {
			p.setRegion(region, func(g *publication.Region) { g.Message = err.Error() })
		}
		if ctx.Err() != nil {
			return err
		}
		return errors.Join(err, p.save(ctx))
	}
	if snapID == "" {
		snapID = rootSnap
	}
	err = share(ctx, e, region, id, snapID, p.o.Share, p.o.Public)
	if err == nil && p.param != "" {
		err = putParameter(ctx, p.c.SSM(region), region, p.param, id, p.description)
	}
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		p.setRegion(region, func(g *publication.Region) { g.Message = err.Error() })
		return errors.Join(err, p.save(ctx))
	}
	p.log.Info("AMI available", "region", region, "ami", id)
	p.setRegion(region, func(g *publication.Region) {
		g.ImageID, g.SnapshotID, g.State, g.Message = id, snapID, publication.StateAvailable, ""
		if p.param != "" {
			g.Parameter = p.param
		}
	})
	return p.save(ctx)
}

// copyTo copies AMI id to region unless an earlier run did (cp), and finishes it.
func (p *publisher) copyTo(ctx context.Context, region, cp, id string) error {
	if cp == "" {
		var err error
		cp, err = copyImage(ctx, p.c.EC2(region), region, p.o.Region, id, p.name, p.description, p.o.Encrypted, p.tags)
		if cp == "" {
			return err
		}
		p.log.Info("copying AMI", "to", region, "ami", cp)
		p.setRegion(region, func(g *publication.Region) { g.ImageID, g.State = cp, publication.StateRegistered })
		if serr := p.save(ctx); serr != nil || err != nil {
			return errors.Join(err, serr)
		}
	}
	return p.finish(ctx, region, cp, "")
}

// setRegion changes the record's entry for region.
func (p *publisher) setRegion(region string, fn func(*publication.Region)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := range p.rec.Regions {
		if p.rec.Regions[i].Region == region {
			fn(&p.rec.Regions[i])
		}
	}
}

// save stores the record with the image unless it equals the last one stored, its state
// being the least advanced region's (StateAvailable only when every region is).
func (p *publisher) save(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rec.State = overall(p.rec.Regions)
	p.rec.Message = ""
	for _, g := range p.rec.Regions {
		if g.Message != "" {
			p.rec.Message = g.Message // each names its region
			break
		}
	}
	c := comparable(p.rec)
	if string(c) == string(p.saved) {
		return nil
	}
	r := p.rec
	r.Published = time.Now().UTC()
	if _, err := publication.Put(ctx, p.st, r); err != nil {
		return err
	}
	p.rec.Published = r.Published
	p.saved = c
	return nil
}

// overall is a publication's state: failed if any region failed, else the least advanced
// region's.
func overall(rs []publication.Region) publication.State {
	order := []publication.State{publication.StateUploading, publication.StateSnapshot, publication.StateRegistered, publication.StateAvailable}
	least := len(order) - 1
	for _, g := range rs {
		if g.State == publication.StateFailed {
			return publication.StateFailed
		}
		for i, s := range order {
			if g.State == s && i < least {
				least = i
			}
		}
	}
	return order[least]
}

// comparable is r without its time, to tell whether anything changed.
func comparable(r publication.Record) []byte {
	r.Published = time.Time{}
	b, _ := json.Marshal(r)
	return b
}

// deregister removes a failed AMI of an earlier run.
func deregister(ctx context.Context, e *ec2.Client, region, id string) error {
	if _, err := e.DeregisterImage(ctx, &ec2.DeregisterImageInput{ImageId: aws.String(id)}); err != nil {
		return fmt.Errorf("deregistering the failed AMI %s in %s (ec2:DeregisterImage): %w", id, region, err)
	}
	return nil
}
