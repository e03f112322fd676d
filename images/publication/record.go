// Package publication records what was published where: for each AMI publication of an image,
// the regions, snapshots and AMIs, their states, and the hash of every 512 KiB block of the
// uploaded disk (the next image of the same name uploads only the blocks whose hash changed).
// Records are OCI referrers of the image in the store, as signatures are. The package also
// holds the names imgctl gives things on AWS: resource tags, SSM parameter paths, AMI names.
package publication

import (
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Media and artifact types of a publication record in the store.
const (
	// ArtifactType is the record manifest's artifactType; its config (the Record as JSON) has
	// this media type too.
	ArtifactType = "application/vnd.imgctl.ami-publication.v1+json"
	// HashesMediaType is the record's one layer: the block hashes (Hashes.MarshalBinary).
	HashesMediaType = "application/vnd.imgctl.ami-block-hashes.v1"
)

// Methods of uploading a disk.
const (
	MethodEBSDirect      = "ebs-direct"      // EBS direct APIs: StartSnapshot, PutSnapshotBlock, CompleteSnapshot
	MethodImportSnapshot = "import-snapshot" // S3 multipart upload, then EC2 ImportSnapshot
)

// State is how far a publication (or one region of it) got.
type State string

// States, in order.
const (
	StateUploading  State = "uploading"  // the snapshot is being written
	StateSnapshot   State = "snapshot"   // the snapshot is completed; no AMI yet
	StateRegistered State = "registered" // the AMI exists and is pending
	StateAvailable  State = "available"  // the AMI is available (and shared as asked)
	StateFailed     State = "failed"     // AWS reported an error; Message says which
)

// Record is one publication of an image as an AMI: the region it was uploaded to and every
// region it was copied to.
type Record struct {
	Image   digest.Digest `json:"image"`   // the image manifest's digest (the referrer's subject)
	Name    string        `json:"name"`    // the image's name (Config.Name): its family for incremental uploads
	Version string        `json:"version"` // the image's readable version
	Method  string        `json:"method"`  // MethodEBSDirect or MethodImportSnapshot
	// Region is where the disk was uploaded; Regions[0] is that region, then the copies.
	Region  string   `json:"region"`
	Regions []Region `json:"regions"`
	// Snapshot is the uploaded snapshot (in Region).
	Snapshot Snapshot `json:"snapshot"`
	// Shared lists the accounts given launch permission; Public, the group "all".
	Shared    []string `json:"shared,omitempty"`
	Public    bool     `json:"public,omitempty"`
	Encrypted bool     `json:"encrypted,omitempty"`
	KMSKeyID  string   `json:"kmsKeyId,omitempty"`
	// SSMPrefix, if set, is where PREFIX/VERSION/image_id was written in each region.
	SSMPrefix string `json:"ssmPrefix,omitempty"`
	// State is StateAvailable only when every region is; otherwise the least advanced one's.
	State     State     `json:"state"`
	Message   string    `json:"message,omitempty"` // why it failed (AWS's state message)
	Published time.Time `json:"published"`         // when the record was written
	// Hashes are the uploaded disk's block hashes; stored as the record's layer, not in the
	// JSON. Nil when the record was read without them.
	Hashes *Hashes `json:"-"`

	// Where a record read from the store is: its manifest, and its block hashes layer (zero
	// when it has none). Set by List.
	stored digest.Digest
	hashes ocispec.Descriptor
}

// Region is an image's AMI in one region.
type Region struct {
	Region     string `json:"region"`
	ImageID    string `json:"imageId,omitempty"`
	SnapshotID string `json:"snapshotId,omitempty"`
	State      State  `json:"state"`
	// Parameter is the SSM parameter naming this version's AMI there (PREFIX/VERSION/image_id).
	Parameter string `json:"parameter,omitempty"`
	Message   string `json:"message,omitempty"`
}

// Snapshot describes an uploaded snapshot.
type Snapshot struct {
	ID string `json:"id"`
	// Parent is the snapshot it was written on top of (ParentSnapshotId), if incremental.
	Parent     string `json:"parent,omitempty"`
	ParentFrom string `json:"parentFrom,omitempty"` // the image whose publication Parent is
	VolumeSize int64  `json:"volumeSizeGiB"`
	BlockSize  int64  `json:"blockSize"`
	Blocks     int64  `json:"blocks"`     // blocks of the volume
	DataBlocks int64  `json:"dataBlocks"` // blocks that are not all zeros
	Sent       int64  `json:"sent"`       // blocks written by this upload
	BytesSent  int64  `json:"bytesSent"`
}

// RegionState returns the record's entry for region r.
func (r *Record) RegionState(region string) (Region, bool) {
	for _, g := range r.Regions {
		if g.Region == region {
			return g, true
		}
	}
	return Region{}, false
}
