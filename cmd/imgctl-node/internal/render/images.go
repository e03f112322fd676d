package render

import (
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/imgctl/imgctl/layers/kubeversion"
)

// controlPlaneRepository is where imgctl's control-plane images are named
// (scripts/build-control-plane-images.sh).
const controlPlaneRepository = kubeversion.ControlPlaneRepository

// Control-plane components, as kubeadm names their images.
const (
	compAPIServer         = "kube-apiserver"
	compControllerManager = "kube-controller-manager"
	compScheduler         = "kube-scheduler"
	compProxy             = "kube-proxy"
	compPause             = "pause"
	compEtcd              = "etcd"
	compCoreDNS           = "coredns"
)

// controlPlaneComponents are the images kubeadm init and join --control-plane check in preflight
// (kubeadm's images.GetControlPlaneImages with local etcd and CoreDNS), in kubeadm's order.
var controlPlaneComponents = []string{compAPIServer, compControllerManager, compScheduler, compProxy, compPause, compEtcd, compCoreDNS}

// controlPlaneOnly are the components only control-plane machines run (kubeadm's static pods);
// kube-proxy, CoreDNS and pause run on every node.
var controlPlaneOnly = []string{compAPIServer, compControllerManager, compScheduler, compEtcd}

// controlPlaneOnlyImages returns the baked images (names, sorted) of controlPlaneOnly components
// in the repository that holds v's kube-apiserver: what a node never runs. None when v's
// kube-apiserver is not baked.
func controlPlaneOnlyImages(names []string, v kubeversion.Version) []string {
	b := newBakedSet(names)
	repo := b.controlPlaneRepo(v)
	if repo == "" {
		return nil
	}
	var out []string
	for _, n := range b.names {
		if n.repo == repo && slices.Contains(controlPlaneOnly, n.component) {
			out = append(out, n.String())
		}
	}
	return out
}

// kubeadmEtcdCoreDNS returns kubeadm's default etcd and CoreDNS image tags for v
// (kubeversion.ControlPlaneImages); known is false for a minor whose defaults are not checked: the
// master then names the baked tags explicitly.
func kubeadmEtcdCoreDNS(v kubeversion.Version) (tags [2]string, known bool) {
	for _, img := range v.ControlPlaneImages(controlPlaneRepository) {
		switch img.Component {
		case compEtcd:
			tags[0], known = img.Tag(), true
		case compCoreDNS:
			tags[1] = img.Tag()
		}
	}
	return tags, known
}

// imageName is a baked image name split as REPOSITORY/COMPONENT:TAG (no digest).
type imageName struct {
	repo, component, tag string
}

func (n imageName) String() string { return n.repo + "/" + n.component + ":" + n.tag }

// parseImageName splits name; ok is false for a name without repository or tag, or with a digest.
func parseImageName(name string) (n imageName, ok bool) {
	if strings.Contains(name, "@") {
		return n, false
	}
	slash := strings.LastIndex(name, "/")
	colon := strings.LastIndex(name, ":")
	if slash <= 0 || colon < slash {
		return n, false
	}
	return imageName{repo: name[:slash], component: name[slash+1 : colon], tag: name[colon+1:]}, true
}

// bakedSet is what Input.BakedImages offers.
type bakedSet struct {
	names []imageName
}

func newBakedSet(names []string) bakedSet {
	var b bakedSet
	for _, s := range names {
		if n, ok := parseImageName(s); ok {
			b.names = append(b.names, n)
		}
	}
	slices.SortFunc(b.names, func(x, y imageName) int { return strings.Compare(x.String(), y.String()) })
	return b
}

// has reports whether repo/component:tag is baked.
func (b bakedSet) has(repo, component, tag string) bool {
	return slices.Contains(b.names, imageName{repo, component, tag})
}

// tags lists the baked tags of repo/component, sorted.
func (b bakedSet) tags(repo, component string) []string {
	var out []string
	for _, n := range b.names {
		if n.repo == repo && n.component == component {
			out = append(out, n.tag)
		}
	}
	return out
}

// controlPlaneRepo is the repository of the baked kube-apiserver image of version v:
// controlPlaneRepository if it is there, else the first in order; "" if none is baked.
func (b bakedSet) controlPlaneRepo(v kubeversion.Version) string {
	var repos []string
	for _, n := range b.names {
		if n.component == compAPIServer && n.tag == "v"+v.String() {
			repos = append(repos, n.repo)
		}
	}
	if len(repos) == 0 {
		return ""
	}
	if slices.Contains(repos, controlPlaneRepository) {
		return controlPlaneRepository
	}
	return repos[0]
}

// controlPlaneImages is what a control-plane node's kubeadm will run, found among the baked
// images: the repository, and the etcd and CoreDNS tags the master's ClusterConfiguration must
// name because they differ from kubeadm's defaults ("" when they do not).
type controlPlaneImages struct {
	repo            string
	etcdTag, dnsTag string // set in ClusterConfiguration; "" = kubeadm's default
	sandbox         string // repo/pause:TAG, when baked
	missing         []string
}

// findControlPlane checks that every image kubeadm init or join --control-plane needs for
// version v is baked: kube-apiserver, kube-controller-manager, kube-scheduler and kube-proxy
// tagged vVERSION, pause with kubeadm's tag, and etcd and CoreDNS with any tag, all in one
// repository. The missing ones are named as kubeadm would look for them.
func findControlPlane(b bakedSet, v kubeversion.Version) controlPlaneImages {
	c := controlPlaneImages{repo: b.controlPlaneRepo(v)}
	if c.repo == "" {
		c.repo = controlPlaneRepository
	}
	defaults, known := kubeadmEtcdCoreDNS(v)
	_, pauseTag, _ := strings.Cut(v.SandboxImage(), kubeversion.SandboxRepository+":")
	for _, comp := range controlPlaneComponents {
		switch comp {
		case compEtcd, compCoreDNS:
			def := defaults[0]
			if comp == compCoreDNS {
				def = defaults[1]
			}
			tags := b.tags(c.repo, comp)
			var tag string
			switch {
			case len(tags) == 0:
				want := def
				if !known {
					want = "TAG"
				}
				c.missing = append(c.missing, imageName{c.repo, comp, want}.String())
				continue
			case known && slices.Contains(tags, def):
				continue // kubeadm's default
			default:
				tag = tags[len(tags)-1]
			}
			if comp == compEtcd {
				c.etcdTag = tag
			} else {
				c.dnsTag = tag
			}
		default:
			tag := "v" + v.String()
			if comp == compPause {
				tag = pauseTag
			}
			if !b.has(c.repo, comp, tag) {
				c.missing = append(c.missing, imageName{c.repo, comp, tag}.String())
			} else if comp == compPause {
				c.sandbox = imageName{c.repo, comp, tag}.String()
			}
		}
	}
	return c
}

// bakedSandbox is the baked pause image containerd should use: the control-plane repository's
// when the kube-apiserver of v is baked, else any image whose repository is named pause.
func bakedSandbox(names []string, v kubeversion.Version) string {
	b := newBakedSet(names)
	if repo := b.controlPlaneRepo(v); repo != "" {
		if c := findControlPlane(b, v); c.sandbox != "" {
			return c.sandbox
		}
	}
	for _, name := range names {
		repo := name
		if i := strings.IndexByte(repo, '@'); i >= 0 {
			repo = repo[:i]
		}
		if i := strings.LastIndexByte(repo, ':'); i > strings.LastIndexByte(repo, '/') {
			repo = repo[:i]
		}
		if path.Base(repo) == compPause {
			return name
		}
	}
	return ""
}

// missingImagesError refuses a control-plane role whose images are not baked.
func missingImagesError(role string, v kubeversion.Version, missing []string) error {
	return &fieldError{Field: "spec.role", Detail: fmt.Sprintf(
		"this image cannot serve role %s: kubeadm %s needs control-plane images it does not bake (nothing is pulled at boot): %s",
		role, v, strings.Join(missing, ", "))}
}
