// Command packer-plugin-imgctl is the Packer plugin of imgctl: its builder "imgctl" builds a
// node image with imgctl's libraries (and publishes it as AMIs) from an HCL2 source block.
package main

import (
	"fmt"
	"os"

	"github.com/hashicorp/packer-plugin-sdk/plugin"
	"github.com/hashicorp/packer-plugin-sdk/version"

	"github.com/imgctl/imgctl/cmd/packer-plugin-imgctl/builder"
)

// The plugin's version (semver: Packer checks it), set at build time:
// -ldflags "-X main.Version=1.2.3 -X main.VersionPrerelease=" for a release; make build sets
// VersionMetadata to the commit otherwise.
var (
	Version           = "0.1.0"
	VersionPrerelease = "dev"
	VersionMetadata   = ""
	// ImgctlVersion is the imgctl version recorded in the images it builds: make sets it to what
	// it gives imgctl's main.version, so the CLI and the plugin built from one checkout make the
	// same image (the same digest) from the same inputs.
	ImgctlVersion = "dev"
)

func main() {
	s := plugin.NewSet()
	v := version.NewPluginVersion(Version, VersionPrerelease, VersionMetadata)
	s.RegisterBuilder(plugin.DEFAULT_NAME, &builder.Builder{Tool: "imgctl packer-plugin-imgctl " + v.FormattedVersion(), ImgctlVersion: ImgctlVersion})
	s.SetVersion(v)
	if err := s.Run(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
