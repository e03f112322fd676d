# imgctl — see README.md. Targets: build, test, e2e-cluster, bench, fuzz, demo, nightly, lint, clean.
GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)
K8S       ?= 1.21.13
# Tools and test inputs built from the Go module proxy are cached here between runs.
TOOLS_DIR ?= $(CURDIR)/.cache/tools
STATICCHECK_VERSION := v0.8.2
GOTESTSUM_VERSION   := v1.13.0
# The cosign CLI the signature tests verify with: the version test/tools/cosign pins.
COSIGN    := $(shell sed -n 's|^require github.com/sigstore/cosign/v2 v||p' test/tools/cosign/go.mod)
# The Packer CLI the plugin's acceptance test drives: the version test/tools/packer pins.
PACKER    := $(shell sed -n 's|^require github.com/hashicorp/packer v||p' test/tools/packer/go.mod)

.PHONY: build deps test test-short e2e-cluster lint bench fuzz demo demo-image nightly kubernetes control-plane-images cosign packer clean FORCE

build: bin/imgctl bin/imgctl-node bin/packer-plugin-imgctl

bin/imgctl: FORCE
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $@ ./cmd/imgctl

# The node agent: /init of the initrd (and, later, the bootstrap units' logic). Static.
bin/imgctl-node: FORCE
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o $@ ./cmd/imgctl-node

# The Packer plugin, its own module (packer-plugin-sdk): Packer finds it as packer-plugin-imgctl
# in PACKER_PLUGIN_PATH or beside the template.
# Its version must be semver (Packer checks it): a release tag vX.Y.Z, else 0.1.0-dev+COMMIT.
PLUGIN := cmd/packer-plugin-imgctl
PLUGIN_TAG := $(shell git describe --tags --exact-match --match 'v[0-9]*.[0-9]*.[0-9]*' 2>/dev/null | sed 's/^v//')
PLUGIN_LDFLAGS := -X main.ImgctlVersion=$(VERSION) $(if $(PLUGIN_TAG),-X main.Version=$(PLUGIN_TAG) -X main.VersionPrerelease=,-X main.VersionMetadata=$(shell git rev-parse --short HEAD 2>/dev/null))
bin/packer-plugin-imgctl: FORCE
	cd $(PLUGIN) && CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(PLUGIN_LDFLAGS)" -o $(CURDIR)/$@ .

# Debian packages the demo and the tests use (installed only when missing).
deps:
	scripts/install-deps.sh

# The test command of the README and CI: vet, staticcheck, every test (integration included).
# The boot and render tests need the real kubelet/kubeadm, the signature tests cosign, the
# plugin's acceptance test Packer: build them once, before the tests.
# gotestsum runs `go test` and ends with the skipped tests, named, and a count line ("DONE N
# tests, K skipped, F failures"): under CI=true a missing prerequisite fails (layers/testenv),
# so a skip in CI is only a deliberate one (-short paths, opt-in measurements).
# The test/ package boots qemu guests one after another (TCG): ~28 min, plus ~15 min for the
# in-place update e2e (about ten OVMF boots); -timeout bounds a package.
test: deps lint kubernetes cosign packer control-plane-images
	$(GO) run gotest.tools/gotestsum@$(GOTESTSUM_VERSION) --format pkgname-and-test-fails -- -timeout 75m ./...
	cd $(PLUGIN) && $(GO) run gotest.tools/gotestsum@$(GOTESTSUM_VERSION) --format pkgname-and-test-fails -- -timeout 20m ./...

# make test forms a two-machine cluster (test/cluster_form_test.go: master-1 + node-1 of
# examples/cluster-inventory.yaml); the three-machine cluster, the other cluster tests (build tag
# cluster: test/cluster_*e2e_test.go) and the control-plane image tests
# (test/controlplane_layout_test.go) are too heavy for make test in CI's time, so they run here.
# CI=true: a missing prerequisite fails instead of skipping.
e2e-cluster: deps kubernetes control-plane-images
	CI=true $(GO) test -tags cluster -count=1 -timeout 150m -v -run 'TestCluster|TestControlPlane' ./test/

test-short:
	$(GO) test -short ./...
	cd $(PLUGIN) && $(GO) test -short ./...

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...
	$(GO) vet -tags cluster ./test/
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) -tags cluster ./test/
	cd $(PLUGIN) && $(GO) vet ./... && $(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...
	cd $(PLUGIN) && $(GO) generate ./... && git diff --exit-code -- . || { echo "$(PLUGIN): go generate changed the committed HCL2 spec"; exit 1; }
	shellcheck scripts/*.sh scripts/nightly .ci/run

# Benchmarks and peer comparisons; results are appended to BENCHMARKS.md.
bench: deps build demo-image
	$(GO) test -run '^$$' -bench . -benchmem ./layers/compose/
	scripts/bench-compose.sh
	scripts/bench-raw.sh
	scripts/bench-ami.sh
	scripts/bench-boot.sh out/demo/disk.raw
	scripts/bench-registry.sh
	scripts/bench-serve.sh
	scripts/bench-update.sh

# Every fuzz target for FUZZTIME (default 60s) each; new interesting inputs are kept in the
# packages' testdata/fuzz, which make test runs as seeds. Not part of make test.
fuzz:
	scripts/fuzz.sh

# A real kubelet, kubeadm and crictl for K8S, built from the Go module proxy (dl.k8s.io may be
# unreachable). The script keeps what a cache already has.
kubernetes: $(TOOLS_DIR)/kubernetes/v$(K8S)/kubelet $(TOOLS_DIR)/kubernetes/v$(K8S)/crictl

$(TOOLS_DIR)/kubernetes/v$(K8S)/kubelet $(TOOLS_DIR)/kubernetes/v$(K8S)/crictl:
	scripts/build-kubernetes.sh $(K8S) $(TOOLS_DIR)/kubernetes/v$(K8S)

# The control-plane images kubeadm $(K8S) expects for imageRepository registry.imgctl.invalid/kubernetes
# (kube-apiserver, -controller-manager, -scheduler, kube-proxy, etcd, CoreDNS, pause), built from
# the Go module proxy into one OCI layout, with the spec source lines that bake them (sources.txt).
# make test and make e2e-cluster build it first (6–8 min cold here; seconds when nothing changed).
control-plane-images:
	scripts/build-control-plane-images.sh $(K8S) $(TOOLS_DIR)/control-plane/v$(K8S)

# The cosign CLI, built from the Go module proxy: test/registry_e2e_test.go checks with it that
# `cosign verify` accepts imgctl's signatures.
cosign: $(TOOLS_DIR)/cosign/v$(COSIGN)/cosign

$(TOOLS_DIR)/cosign/v$(COSIGN)/cosign:
	scripts/build-go-tool.sh cosign $(COSIGN) $(TOOLS_DIR)/cosign/v$(COSIGN)

# The Packer CLI, built from the Go module proxy: test/packer_e2e_test.go runs `packer build` with
# packer-plugin-imgctl (Debian's Packer 1.6.6 cannot load SDK v0.6 plugins).
packer: $(TOOLS_DIR)/packer/v$(PACKER)/packer

$(TOOLS_DIR)/packer/v$(PACKER)/packer:
	scripts/build-go-tool.sh packer $(PACKER) $(TOOLS_DIR)/packer/v$(PACKER)

# The main job on the embedded default spec: a Kubernetes $(K8S) node image (raw GPT disk) from
# Debian packages, with kubelet/kubeadm from the Go proxy in place of the dl.k8s.io downloads and
# a demo NodeConfig baked in (scripts/demo-node.sh; real nodes read theirs from a metadata server
# or EC2 user data), then booted in qemu (UEFI, TCG) until the node has configured itself and its
# kubelet answers /healthz.
demo: demo-image
	bin/imgctl images list
	scripts/boot-qemu.sh out/demo/disk.raw

# (Only imgctl and the node agent: the demo does not need the Packer plugin and its SDK.)
demo-image: deps bin/imgctl bin/imgctl-node kubernetes
	scripts/demo-node.sh out/demo-node
	bin/imgctl build --k8s $(K8S) --target raw \
	  --source 'kubelet=file://$(TOOLS_DIR)/kubernetes/v$(K8S)/kubelet#path=/usr/bin/kubelet&mode=0755' \
	  --source 'kubelet=file://$(TOOLS_DIR)/kubernetes/v$(K8S)/kubeadm#path=/usr/bin/kubeadm&mode=0755' \
	  --source 'extra=file://$(CURDIR)/out/demo-node/' \
	  --output out/demo

# The nightly job (README, "Nightly pipeline"): build --locked, boot check, sign, publish, channel
# nightly; configured by environment variables (scripts/nightly --help).
nightly: bin/imgctl bin/imgctl-node
	scripts/nightly build

clean:
	rm -rf bin out
