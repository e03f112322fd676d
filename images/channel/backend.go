package channel

import (
	"context"
	"log/slog"

	"github.com/opencontainers/go-digest"

	"github.com/imgctl/imgctl/images/store"
)

// Backend keeps the histories of a set of channels: the local store's (Log) or an OCI
// registry's (images/registry.Channels).
type Backend interface {
	// Order is the promotion order; it also lists every channel there is.
	Order() ([]string, error)
	// History returns a channel's history, oldest first (no entries for a channel that never
	// moved); ErrUnknownChannel for a name not in Order.
	History(ctx context.Context, ch string) (History, error)
	// Move appends e if the channel's head is still expect (compare-and-swap), else fails with
	// an error wrapping ErrConflict. It fills Seq, Channel, From, FromVersion, When, Who and Tool
	// when they are zero.
	Move(ctx context.Context, ch string, expect digest.Digest, e Entry) (Entry, error)
}

// Images is where channels find the images they point to.
type Images interface {
	// Resolve finds an image by digest, unique digest prefix or version (store.ErrNotFound).
	Resolve(ctx context.Context, ref string) (store.Image, error)
	// Check refuses an image that is not whole; the error names the bad blob.
	Check(ctx context.Context, img store.Image) error
	// Hold runs fn, the move of a channel to img, while img cannot be deleted.
	Hold(ctx context.Context, img store.Image, fn func() error) error
}

// Mover applies the promotion rules (order, --force, rollback targets, integrity and signature
// checks) to channels kept by a Backend, pointing at Images.
type Mover struct {
	Channels Backend
	Images   Images
	// Verify, if set, must accept an image before a channel moves to it (a trust policy).
	Verify func(ctx context.Context, img store.Image) error
	Logger *slog.Logger // nil: discard
	// Mirror, if set, copies each move elsewhere (images/awschannel: SSM parameters). It is
	// asked after every rule accepted the move and before the move; the move is then made and
	// the mirror's commit run. Promoting or rolling back to the image already at the head
	// prepares and commits again, so a rerun finishes a mirror that failed half-way.
	Mirror Mirror
}

// Mirror copies channel moves outside the Backend.
type Mirror interface {
	// Prepare checks that channel ch may move from image from ("" = empty channel) to image to
	// and returns the commit that makes the move there; an error refuses the move. commit runs
	// only after the channel moved.
	Prepare(ctx context.Context, ch string, from digest.Digest, to store.Image) (commit func(context.Context) error, err error)
}

// LocalImages are the images of a local store: Check hashes every blob, Hold runs the move
// under the store lock (so gc, which takes it too, cannot delete the image meanwhile).
type LocalImages struct{ Store *store.Store }

// Resolve implements Images.
func (li LocalImages) Resolve(ctx context.Context, ref string) (store.Image, error) {
	return li.Store.Resolve(ctx, ref)
}

// Check implements Images.
func (li LocalImages) Check(ctx context.Context, img store.Image) error {
	return checkBlobs(ctx, li.Store, img)
}

// Hold implements Images.
func (li LocalImages) Hold(ctx context.Context, img store.Image, fn func() error) error {
	return li.Store.Holding(ctx, img.Digest(), fn)
}

var (
	_ Backend = (*Log)(nil)
	_ Images  = LocalImages{}
)
