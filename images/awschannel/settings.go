// Package awschannel mirrors channels to AWS: with a store's AWS settings (STORE/aws.json:
// regions, an SSM prefix, accounts the AMIs are shared with), promote and rollback write
// PREFIX/CHANNEL/image_id in every region, the parameter launch templates read with
// resolve:ssm:. A parameter is written only after the image's AMI is available and shared in
// every region, and only if it still holds the AMI the channel history says it should.
package awschannel

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"github.com/imgctl/imgctl/images/ami"
	"github.com/imgctl/imgctl/images/awsclient"
	"github.com/imgctl/imgctl/images/publication"
	"github.com/imgctl/imgctl/layers/atomicfile"
)

// SettingsFile is the name of a store's AWS channel settings, in the store directory.
const SettingsFile = "aws.json"

// Settings say where a store's channels are mirrored on AWS.
type Settings struct {
	// Regions are the regions every promoted image must be available in; each gets the
	// channel parameters.
	Regions []string `json:"regions"`
	// SSMPrefix is the parameter path prefix: PREFIX/CHANNEL/image_id.
	SSMPrefix string `json:"ssmPrefix"`
	// Share lists the accounts every promoted AMI must be shared with (launch permission).
	Share []string `json:"share,omitempty"`
}

// Check validates s; errors name the field.
func (s Settings) Check() error {
	if len(s.Regions) == 0 {
		return errors.New("regions: at least one region is required")
	}
	for i, r := range s.Regions {
		if err := awsclient.CheckRegion(r); err != nil {
			return fmt.Errorf("regions[%d]: %w", i, err)
		}
		if slices.Index(s.Regions, r) < i {
			return fmt.Errorf("regions[%d]: %s is listed twice", i, r)
		}
	}
	if s.SSMPrefix == "" {
		return errors.New("ssmPrefix: required (a path like /imgctl/nodes)")
	}
	if err := publication.CheckSSMPrefix(s.SSMPrefix); err != nil {
		return fmt.Errorf("ssmPrefix: %w", err)
	}
	for i, a := range s.Share {
		if err := awsclient.CheckAccount(a); err != nil {
			return fmt.Errorf("share[%d]: %w", i, err)
		}
		if slices.Index(s.Share, a) < i {
			return fmt.Errorf("share[%d]: %s is listed twice", i, a)
		}
	}
	return nil
}

// LoadSettings reads the AWS settings of the store in storeDir (STORE/aws.json): nil, nil when
// there are none. Unknown fields are refused, so a misspelt one cannot silently drop a region
// or an account. Errors name the file and the field.
func LoadSettings(storeDir string) (*Settings, error) {
	path := filepath.Join(storeDir, SettingsFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		if _, lerr := os.Lstat(path); errors.Is(lerr, fs.ErrNotExist) {
			return nil, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("loading AWS settings: %w", err)
	}
	var s Settings
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("loading AWS settings %s: %w (want {\"regions\": [\"us-east-1\", …], \"ssmPrefix\": \"/imgctl/nodes\", \"share\": [\"123456789012\", …]})", path, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("loading AWS settings %s: data after the JSON object", path)
	}
	if err := s.Check(); err != nil {
		return nil, fmt.Errorf("loading AWS settings %s: %w", path, err)
	}
	return &s, nil
}

// SaveSettings checks s and writes it as the AWS settings of the store in storeDir (temp file,
// fsync, rename).
func SaveSettings(ctx context.Context, storeDir string, s Settings) error {
	path := filepath.Join(storeDir, SettingsFile)
	if err := s.Check(); err != nil {
		return fmt.Errorf("AWS settings %s: %w", path, err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write("", path, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("writing AWS settings %s: %w", path, err)
	}
	return nil
}

// RemoveSettings removes the AWS settings of the store in storeDir (none is not an error):
// channels are then no longer mirrored.
func RemoveSettings(storeDir string) error {
	path := filepath.Join(storeDir, SettingsFile)
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing AWS settings: %w", err)
	}
	return atomicfile.SyncDir(storeDir)
}

// PublishDefaults fills the publish options the caller left empty from s, so that a
// publication reaches what promote will check: the settings' other regions (CopyTo), their
// accounts (Share, unless Public) and their SSM prefix. It reports whether it changed anything.
// imgctl publish ami, imgctl build --target ami and the Packer plugin publish with it.
func (s Settings) PublishDefaults(o *ami.Options) bool {
	changed := false
	if len(o.CopyTo) == 0 {
		for _, r := range s.Regions {
			if r != o.Region {
				o.CopyTo = append(o.CopyTo, r)
			}
		}
		changed = len(o.CopyTo) > 0
	}
	if len(o.Share) == 0 && !o.Public && len(s.Share) > 0 {
		o.Share, changed = slices.Clone(s.Share), true
	}
	if o.SSMPrefix == "" && s.SSMPrefix != "" {
		o.SSMPrefix, changed = s.SSMPrefix, true
	}
	return changed
}
