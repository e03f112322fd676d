package builder

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestPrepareErrors: every bad input fails Prepare, before anything happens, with an error
// naming the field, the value and what was expected.
func TestPrepareErrors(t *testing.T) {
	b := newBuild(t)
	missing := filepath.Join(b.dir, "missing.yaml")
	ami := map[string]any{"targets": []string{"ami"}, "region": "us-east-1"}
	with := func(base map[string]any, kv ...any) map[string]any {
		out := map[string]any{}
		for k, v := range base {
			out[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			out[kv[i].(string)] = kv[i+1]
		}
		return out
	}
	for _, tc := range []struct {
		name  string
		extra map[string]any
		want  string
	}{
		{"missing spec file", map[string]any{"spec_file": missing}, "spec_file: load spec: stat " + missing + ": no such file or directory"},
		{"spec file and k8s version", map[string]any{"k8s_version": "1.21.13"}, "spec_file and k8s_version: give one of them, not both"},
		{"neither", map[string]any{"spec_file": nil}, "spec_file or k8s_version: give one of them (a NodeImage spec file, or the Kubernetes version of the embedded default spec)"},
		{"flavor with a spec file", map[string]any{"flavor": "metal"}, "flavor chooses a variant of the embedded default spec: give it with k8s_version, not with spec_file"},
		{"unknown flavor", map[string]any{"spec_file": nil, "k8s_version": "1.21.13", "flavor": "tiny"}, `k8s_version "1.21.13", flavor "tiny": `},
		{"unknown Kubernetes", map[string]any{"spec_file": nil, "k8s_version": "0.1"}, `k8s_version "0.1": `},
		{"bad source", map[string]any{"sources": []string{"kubelet"}}, `sources "kubelet": expected ROLE=URI`},
		{"unknown target", map[string]any{"targets": []string{"raw", "iso"}}, `targets: unknown target "iso" (supported: raw, pxe, rootfs, ami)`},
		{"locked and update_lock", map[string]any{"locked": true, "update_lock": true}, "locked and update_lock: give one of them, not both"},
		{"bad disk size", map[string]any{"disk_size": "big"}, `disk_size: "big": expected a size like 3GiB, 512MiB or a number of bytes`},
		{"bad root size", map[string]any{"root_size": "-1G"}, `root_size: "-1G": expected a size like 3GiB`},
		{"bad compressor", map[string]any{"compression": "lzma9"}, `compression: unknown compressor "lzma9"`},
		{"bad compression level", map[string]any{"compression_level": -2}, "compression_level: zstd level -2 out of range 1..22"},
		{"compression level out of range", map[string]any{"compression": "gzip", "compression_level": 12}, "compression_level: gzip level 12 out of range 1..9"},
		{"ami field without ami", map[string]any{"ami_regions": []string{"eu-west-1"}}, "ami_regions: a field of the ami target, which this build does not write (targets: raw)"},
		{"region without ami", map[string]any{"targets": []string{"raw", "pxe"}, "region": "us-east-1"}, "region: a field of the ami target, which this build does not write (targets: raw,pxe)"},
		{"bad region", with(ami, "region", "Mars"), `region: "Mars" is not an AWS region`},
		{"copy to the upload region", with(ami, "ami_regions", []string{"us-east-1"}), "ami_regions us-east-1: that is the region the AMI is registered in (region); list only the other regions"},
		{"bad account", with(ami, "ami_users", []string{"1234"}), `ami_users: "1234" is not an AWS account ID (expected 12 digits)`},
		{"bad group", with(ami, "ami_groups", []string{"friends"}), `ami_groups "friends": the only group is "all" (everyone: public AMIs)`},
		{"encrypted public", with(ami, "ami_groups", []string{"all"}, "encrypt_boot", true), "ami_groups with encrypt_boot: AWS does not make encrypted AMIs public"},
		{"kms key not an ARN", with(ami, "kms_key_id", "alias/nodes"), `kms_key_id "alias/nodes": the EBS direct APIs take the key's ARN`},
		{"bad method", with(ami, "upload_method", "scp"), `upload_method "scp": expected ebs-direct or import-snapshot`},
		{"import without bucket", with(ami, "upload_method", "import-snapshot"), "upload_method import-snapshot uploads the disk to S3 first: give s3_bucket BUCKET"},
		{"bucket without import", with(ami, "s3_bucket", "disks"), "s3_bucket is used only with upload_method import-snapshot (upload_method is ebs-direct)"},
		{"bad concurrency", with(ami, "upload_concurrency", 5000), "upload_concurrency 5000: expected 1 to 1024 blocks in flight"},
		{"bad wait", with(ami, "aws_wait", "soon"), `aws_wait "soon": expected a duration like 45m`},
		{"zero wait", with(ami, "aws_wait", "0s"), "aws_wait 0s: expected a positive duration like 45m"},
		{"bad ssm prefix", with(ami, "ssm_prefix", "nodes"), `ssm_prefix: SSM prefix "nodes": must start with /`},
		{"bad name prefix", with(ami, "ami_name_prefix", "nodes#"), `ami_name_prefix "nodes#": AMI name`},
		{"missing sign key", map[string]any{"sign_key": filepath.Join(b.dir, "none.key")}, "sign_key: "},
		{"bad endpoint", with(ami, "endpoint_url", "localhost:5000"), `endpoint_url: endpoint URL "localhost:5000": expected http(s)://HOST[:PORT][/PATH]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var bl Builder
			_, _, err := bl.Prepare(b.config(tc.extra))
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
				t.Errorf("Prepare: %v\nwant %s…", err, tc.want)
			}
		})
	}
}

// TestPrepareHasNoSideEffects: Prepare creates neither the store, the cache, the lock nor the
// output directory.
func TestPrepareHasNoSideEffects(t *testing.T) {
	b := newBuild(t)
	prepared(t, b.config(nil))
	if got, _ := filepath.Glob(filepath.Join(b.dir, "*")); len(got) != 0 {
		t.Errorf("Prepare created %v", got)
	}
}

// TestPrepareDefaults: targets default to raw; output_directory to output-BUILDNAME (absolute).
func TestPrepareDefaults(t *testing.T) {
	b := newBuild(t)
	bl := prepared(t, b.config(map[string]any{"output_directory": nil, "store": nil, "lock_file": nil}))
	c := bl.config
	abs, _ := filepath.Abs("output-node")
	if len(c.targetNames) != 1 || c.targetNames[0] != "raw" || c.OutputDirectory != abs || c.Store != ".imgctl/store" || c.LockFile != "imgctl.lock" {
		t.Errorf("defaults: targets %v, output %s, store %s, lock %s", c.targetNames, c.OutputDirectory, c.Store, c.LockFile)
	}
	// The ami target writes raw's files and publishes them.
	bl = prepared(t, b.config(map[string]any{"targets": []string{"ami,pxe"}, "region": "us-east-1", "ami_groups": []string{"all"}, "aws_wait": "2m"}))
	c = bl.config
	if !c.publishAMI || strings.Join(c.targetNames, ",") != "raw,pxe" || !c.amiOpts.Public || c.amiOpts.Wait.Minutes() != 2 || c.amiOpts.Concurrency != 64 {
		t.Errorf("ami: publish %v, targets %v, options %+v", c.publishAMI, c.targetNames, c.amiOpts)
	}
}

// TestPrepareSourceDateEpoch: SOURCE_DATE_EPOCH in Packer's environment fixes the build's
// timestamps as with imgctl build; a bad value fails Prepare.
func TestPrepareSourceDateEpoch(t *testing.T) {
	b := newBuild(t)
	t.Setenv("SOURCE_DATE_EPOCH", "yesterday")
	var bl Builder
	if _, _, err := bl.Prepare(b.config(nil)); err == nil || err.Error() != `SOURCE_DATE_EPOCH="yesterday": expected seconds since 1970` {
		t.Errorf("Prepare: %v", err)
	}
	t.Setenv("SOURCE_DATE_EPOCH", "1600000000")
	if epoch := prepared(t, b.config(nil)).config.setup().SourceDateEpoch; epoch != "1600000000" {
		t.Errorf("setup's SOURCE_DATE_EPOCH = %q", epoch)
	}
}
