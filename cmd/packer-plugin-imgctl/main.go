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

// Version and VersionPrerelease are set at build time:
// -ldflags "-X main.Version=1.2.3 -X main.VersionPrerelease=".
var (
	Version           = "0.1.0"
	VersionPrerelease = "dev"
)

func main() {
	s := plugin.NewSet()
	s.RegisterBuilder(plugin.DEFAULT_NAME, new(builder.Builder))
	s.SetVersion(version.NewPluginVersion(Version, VersionPrerelease, ""))
	if err := s.Run(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
