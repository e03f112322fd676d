package serve

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"

	digest "github.com/opencontainers/go-digest"

	"github.com/imgctl/imgctl/images/channel"
	"github.com/imgctl/imgctl/images/sign"
	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/images/update"
)

// ErrNotInstallable marks a channel whose image a disk node cannot install in place (no root
// squashfs with a dm-verity tree, no kernel or initrd, no architecture) or that the store does
// not serve (not in it, unreadable, refused by its trust policy).
var ErrNotInstallable = errors.New("channel's image cannot be served for in-place updates")

// refusal is why a channel's image gets no pointer; it wraps ErrNotInstallable without
// repeating its text.
type refusal struct{ err error }

func (r refusal) Error() string   { return r.err.Error() }
func (r refusal) Unwrap() []error { return []error{r.err, ErrNotInstallable} }

// installable reads image d's manifest from st and checks it as a node will
// (update.ParseManifest): only an image a node can install gets a pointer.
func installable(ctx context.Context, st *store.Store, d digest.Digest) (update.Image, error) {
	rc, err := st.OpenBlob(ctx, d)
	if err != nil {
		return update.Image{}, err
	}
	defer func() { _ = rc.Close() }()
	data, err := io.ReadAll(io.LimitReader(rc, update.MaxManifestBytes+1))
	if err != nil {
		return update.Image{}, fmt.Errorf("reading manifest %s: %w", d, err)
	}
	return update.ParseManifest(data, d.String())
}

// pointerOf is channel ch's pointer document at image im.
func pointerOf(ch string, im update.Image) ([]byte, error) {
	return update.EncodePointer(update.Pointer{
		SchemaVersion: update.PointerSchemaVersion, MediaType: update.PointerMediaType, Channel: ch,
		Image: im.Digest, Version: im.Version, Kubernetes: im.Kubernetes, Architecture: im.Architecture,
	})
}

// Pointer is the pointer document (update.Pointer JSON) of channel ch of the store st, as GET
// /v1/channels/CH of imgctl serve on that store answers it now: the channel's head, if the
// store's trust policy (if any) accepts it and a node can install it in place. Errors wrap
// channel.ErrUnknownChannel, channel.ErrEmpty or ErrNotInstallable and name the channel.
func Pointer(ctx context.Context, st *store.Store, channels channel.Backend, ch string) ([]byte, error) {
	h, err := channels.History(ctx, ch)
	if err != nil {
		return nil, err
	}
	d := h.Head()
	if d == "" {
		return nil, fmt.Errorf("channel %s: %w (promote an image into it)", ch, channel.ErrEmpty)
	}
	what := fmt.Sprintf("channel %s points to image %s", ch, d)
	img, err := st.Resolve(ctx, d.String())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, refusal{err})
	}
	what = fmt.Sprintf("channel %s points to image %s (%s)", ch, img.Config.Version, d)
	policy, err := sign.PolicyForStore(st.Dir())
	if err != nil {
		return nil, fmt.Errorf("trust policy of store %s: %w", st.Dir(), err)
	}
	if policy != nil {
		if err := policy.Verify(ctx, st, img); err != nil {
			return nil, fmt.Errorf("%s, which the trust policy of the store refuses: %w", what, refusal{err})
		}
	}
	im, err := installable(ctx, st, d)
	if err != nil {
		return nil, fmt.Errorf("%s, which nodes cannot install in place: %w", what, refusal{err})
	}
	return pointerOf(ch, im)
}

// channelPointer serves GET /v1/channels/{channel}: the channel's pointer (Pointer), from the
// server's cached view of the store. 404 for a name that is not a channel of the store or a
// channel with no image yet; 409 for a channel whose image the server does not serve (refused
// by the trust policy, unreadable, not in the store) or nodes cannot install in place.
func (s *Server) channelPointer(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	w.Header().Set("Cache-Control", "no-store")
	ch := r.PathValue("channel")
	if err := channel.ValidateName(ch); err != nil {
		http.Error(w, "not found: "+err.Error(), http.StatusNotFound)
		return
	}
	// Unknown names are answered without a look at the channel's history, so requests for
	// made-up names leave nothing behind in the heads cache.
	order, err := s.o.Channels.Order()
	if err != nil {
		s.log.Error("reading the channel order", "err", err)
		http.Error(w, "the store's channels cannot be read (see the server's log)", http.StatusServiceUnavailable)
		return
	}
	if !slices.Contains(order, ch) {
		http.Error(w, fmt.Sprintf("not found: channel %s is not a channel of the store (its channels: %v)", ch, order), http.StatusNotFound)
		return
	}
	d, err := s.heads.get(ctx, ch)
	if err != nil {
		var ce channelError
		status := http.StatusServiceUnavailable
		if errors.As(err, &ce) && ce.status != 0 {
			status = ce.status
		}
		http.Error(w, "channel "+ch+": "+ce.why, status)
		return
	}
	im, err := s.pointerImage(ctx, d)
	if err != nil {
		s.log.Warn("channel pointer refused", "channel", ch, "image", d, "err", err)
		http.Error(w, fmt.Sprintf("channel %s points to image %s, %v", ch, d, err), http.StatusConflict)
		return
	}
	data, err := pointerOf(ch, im)
	if err != nil {
		s.log.Error("encoding a channel pointer", "channel", ch, "image", d, "err", err)
		http.Error(w, "internal error encoding the pointer (see the server's log)", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", update.PointerMediaType)
	_, _ = w.Write(data)
}

// pointerImage is image d as the pointer route may name it: served by this server (in the
// catalog: in the store, readable, accepted by the trust policy) and installable in place.
func (s *Server) pointerImage(ctx context.Context, d digest.Digest) (update.Image, error) {
	cat, err := s.cat.get(ctx, false)
	if err == nil {
		if _, ok := cat.images[d]; !ok {
			// Perhaps an image stored since the server last looked: look again now.
			cat, err = s.cat.get(ctx, true)
		}
	}
	if err != nil {
		return update.Image{}, errors.New("which cannot be read: the store is unreadable (see the server's log)")
	}
	if _, ok := cat.images[d]; !ok {
		if why, refused := cat.refused[d]; refused {
			var u store.UnreadableImage
			if errors.As(why, &u) {
				return update.Image{}, errors.New("which cannot be read (run imgctl store verify)")
			}
			return update.Image{}, fmt.Errorf("which the trust policy of the store refuses (%v)", why)
		}
		return update.Image{}, errors.New("which is not in the store")
	}
	if v, ok := cat.installable.Load(d); ok {
		r := v.(installResult)
		return r.im, r.err
	}
	im, err := installable(context.WithoutCancel(ctx), s.st, d)
	if err != nil {
		err = fmt.Errorf("which nodes cannot install in place: %w", err)
	}
	if err == nil || errors.Is(err, update.ErrInvalid) { // not a read error that may pass
		cat.installable.Store(d, installResult{im: im, err: err})
	}
	return im, err
}

// installResult is what pointerImage found about an image (images are immutable: kept with
// the catalog).
type installResult struct {
	im  update.Image
	err error
}
