package main

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/imgctl/imgctl/builders"
	amitarget "github.com/imgctl/imgctl/builders/ami"
	"github.com/imgctl/imgctl/builders/squashfs"
	"github.com/imgctl/imgctl/builders/targets"
	"github.com/imgctl/imgctl/images/ami"
	"github.com/imgctl/imgctl/layers/kubeversion"
	"github.com/imgctl/imgctl/layers/spec"
)

func (a *app) buildCmd() *cobra.Command {
	var (
		file, k8s, lockPath, outputDir string
		sources, targetNames           []string
		updateLock, locked             bool
		parallel                       int
		diskSize, rootSize             string
		compression, agent             string
		signKey                        string
		flavor                         string
		level                          int
		aws                            awsFlags
		af                             amiFlags
	)
	awsSet := pflag.NewFlagSet("ami", pflag.ContinueOnError) // --target ami's flags
	cmd := &cobra.Command{
		Use:   "build [--k8s VERSION | -f SPEC]",
		Short: "Build a node image from a spec (or the embedded default) and its lock",
		Long: `Build resolves every source of the spec to a digest (recorded in the lock file), fetches and
verifies them in parallel into the cache, composes the layers into one normalized rootfs and
writes the targets into the store (see --target). Targets share their steps: --target raw,pxe
composes the rootfs once and compresses the root squashfs once, and a rebuild reuses the
initrd and the squashfs when their inputs did not change. The image digest is the last line of
standard output; a per-phase timing summary goes to standard error.

SOURCE_DATE_EPOCH, if set, fixes every timestamp; otherwise the spec's sourceDateEpoch, then
the lock's, then the current time (recorded in the lock) are used.

--target ami writes what --target raw writes, then publishes the stored image as an AMI (see
imgctl publish ami: the AWS flags below are its flags). AWS credentials, the region and the
publish flags are checked before the build starts; when publishing fails the image stays built
(publish it again with imgctl publish ami).`,
		Example: `  imgctl build --k8s 1.21.13 --target raw --output out/
  imgctl build --k8s 1.21.13 --target raw,pxe --output out/
  imgctl build --k8s 1.21.13 --flavor metal --target pxe --output out/pxe
  imgctl build -f node.yaml --target rootfs
  imgctl build --k8s 1.21.13 --target ami --region us-east-1 --copy-to eu-west-1 --ssm-prefix /imgctl/nodes
  imgctl build --k8s 1.21.13 --source 'kubelet=file:///srv/k8s/kubelet#path=/usr/bin/kubelet&mode=0755'
  imgctl build --k8s 1.21.13 --mirror https://deb.debian.org/debian=http://apt.local/debian --offline`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := a.checkFormat(); err != nil {
				return err
			}
			every := repeatLineEvery
			if hasTarget(targetNames, amitarget.Name) {
				every = uploadLineEvery // a CI log shows the upload moving
			}
			stopProgress := a.showProgressEvery(cmd, every)
			defer stopProgress()
			ctx := cmd.Context()
			if file != "" && cmd.Flags().Changed("k8s") {
				return fmt.Errorf("give either -f SPEC or --k8s VERSION, not both")
			}
			if file != "" && cmd.Flags().Changed("flavor") {
				return fmt.Errorf("--flavor chooses a variant of the embedded default spec: give it with --k8s, not with -f SPEC (a spec file names its own kernel; spec.flavor records its flavor)")
			}
			setup := builders.Setup{SpecFile: file, Sources: sources, SourceDateEpoch: os.Getenv("SOURCE_DATE_EPOCH"), Env: a.envConfig()}
			setup.Env.NodeAgent = agent
			if file == "" {
				if flavor == "" { // Setup reads "" as the default: --flavor "" is a mistake
					_, err := spec.DefaultFlavor(k8s, flavor)
					return err
				}
				setup.Kubernetes, setup.Flavor = k8s, flavor
			}
			topts := targets.Options{Squashfs: builders.SquashfsOptions{Compression: compression, Level: level}}
			var err error
			if topts.DiskSize, err = targets.ParseSize(diskSize); err != nil {
				return fmt.Errorf("--disk-size: %w", err)
			}
			if topts.RootSize, err = targets.ParseSize(rootSize); err != nil {
				return fmt.Errorf("--root-size: %w", err)
			}
			opts, err := builders.Prepare(setup)
			if err != nil {
				return flagError(err)
			}
			names := targetNames
			if len(names) == 0 {
				names = opts.Spec.Spec.Targets
			}
			if len(names) == 0 {
				names = []string{"rootfs"}
			}
			if hasTarget(names, amitarget.Name) {
				if err := aws.check(); err != nil {
					return err
				}
				if err := af.check(aws.region); err != nil {
					return err
				}
				if topts.AMIPublish, err = a.amiPublisher(ctx, aws, af); err != nil {
					return err
				}
			} else if f := changedFlag(awsSet); f != "" {
				return fmt.Errorf("--%s is a flag of --target ami, which this build does not write (targets: %s)", f, strings.Join(names, ","))
			}
			if opts.Targets, err = targets.New(names, topts); err != nil {
				return err
			}
			st, err := a.openStore(ctx)
			if err != nil {
				return err
			}
			opts.Store, opts.LockPath, opts.UpdateLock, opts.Locked = st, lockPath, updateLock, locked
			opts.OutputDir, opts.Parallel, opts.ImgctlVersion = outputDir, parallel, version
			res, err := builders.Run(ctx, opts)
			stopProgress()
			// When only publishing failed, the image is built: report it, then fail with that.
			var pe *builders.PublishError
			publishErr := err
			if !errors.As(err, &pe) && err != nil {
				return err
			}
			if signKey != "" {
				if err := a.signImage(cmd, st, res.Image, signKey); err != nil {
					return fmt.Errorf("image %s built, but signing failed: %w", res.Image.Digest(), err)
				}
			}
			if !a.quiet {
				var parts []string
				for _, p := range res.Phases {
					parts = append(parts, p.Name+" "+seconds(p.Duration))
				}
				fmt.Fprintf(a.err, "phases: %s\n", strings.Join(parts, ", "))
			}
			img := res.Image
			published, _ := res.Published[amitarget.Name].(ami.Result)
			hasAMI := published.Record.Image != "" // also how far a failed publish got
			if a.json() {
				out := map[string]any{
					"digest": img.Digest(), "version": img.Config.Version, "config": img.Config,
					"phases": res.Phases, "rootfsReused": res.Reused,
				}
				if hasAMI {
					out["ami"] = amiJSON(published)
				}
				return cmp.Or(a.printJSON(out), publishErr)
			}
			fmt.Fprintf(a.out, "version  %s\nrootfs   %s (%s, %d entries)\n", img.Config.Version, img.Config.Rootfs.Digest, human(img.Config.Rootfs.Size), img.Config.Rootfs.Entries)
			for _, l := range res.Layers {
				fmt.Fprintf(a.out, "layer    %-10s %s %s\n", l.Role, l.Digest, human(l.Size))
			}
			if hasAMI {
				for _, g := range published.Record.Regions {
					fmt.Fprintf(a.out, "ami      %-14s %s %s\n", g.Region, g.ImageID, g.State)
				}
			}
			fmt.Fprintln(a.out, img.Digest())
			return publishErr
		},
	}
	f := cmd.Flags()
	f.StringVarP(&file, "file", "f", "", "NodeImage spec file (default: the embedded default spec)")
	f.StringVar(&k8s, "k8s", "1.21.13", "Kubernetes version for the embedded default spec, "+kubeversion.Range())
	f.StringVar(&flavor, "flavor", spec.FlavorCloud, "variant of the embedded default spec: "+flavorHelp())
	f.StringArrayVar(&sources, "source", nil, "replace a role's sources: ROLE=URI (repeat for several sources of one role)")
	f.StringArrayVar(&targetNames, "target", nil, "targets to write, comma-separated or repeated (default: the spec's targets, else rootfs): "+targetHelp())
	f.StringVar(&lockPath, "lock", "imgctl.lock", "lock file recording every source's digest")
	f.BoolVar(&updateLock, "update-lock", false, "resolve every source again instead of trusting the lock")
	f.BoolVar(&locked, "locked", false, "fail instead of changing the lock file, naming the sources that changed (CI); with --update-lock: resolve every source again and fail if any pin moved")
	f.StringVar(&outputDir, "output", "", "also write the artifacts into this directory")
	f.IntVar(&parallel, "parallel", 0, "concurrent fetches (default: max(4, CPUs))")
	f.StringVar(&diskSize, "disk-size", "", "raw target: disk size, e.g. 3GiB (default 3GiB; STATE grows to fill larger disks at first boot)")
	f.StringVar(&rootSize, "root-size", "", "raw target: size of each of ROOT-A and ROOT-B (default 1GiB)")
	f.StringVar(&compression, "compression", "zstd", "raw and pxe targets: root squashfs compressor ("+strings.Join(squashfs.Compressors(), ", ")+")")
	f.IntVar(&level, "compression-level", 0, "raw and pxe targets: compressor level (default: zstd 3, otherwise the compressor's default)")
	f.StringVar(&signKey, "sign-key", "", "sign the built image with this private key (imgctl key generate)")
	a.limitFlags(f)
	aws.add(awsSet)
	af.add(awsSet)
	awsSet.VisitAll(func(fl *pflag.Flag) { fl.Usage = "--target ami: " + fl.Usage })
	f.AddFlagSet(awsSet)
	f.StringVar(&agent, "node-agent", "", "the static imgctl-node binary: /init of the initrd (raw and pxe) and /usr/bin/imgctl-node of the bootstrap layer (default: imgctl-node beside imgctl, then $PATH)")
	return cmd
}

// flavorHelp lists the default spec's flavors for --flavor's help, from the spec library.
func flavorHelp() string {
	var parts []string
	for _, f := range spec.Flavors() {
		parts = append(parts, f.Name+" ("+f.About+")")
	}
	return strings.Join(parts, "; ")
}

// targetHelp lists the targets for --help.
func targetHelp() string {
	var parts []string
	for _, t := range targets.List() {
		parts = append(parts, t.Name+" ("+t.Summary+")")
	}
	return strings.Join(parts, "; ")
}

// hasTarget reports whether the --target lists name target.
func hasTarget(lists []string, target string) bool {
	for _, l := range lists {
		for _, n := range strings.Split(l, ",") {
			if strings.TrimSpace(n) == target {
				return true
			}
		}
	}
	return false
}

// changedFlag is the name of the first flag of fs given on the command line, or "".
func changedFlag(fs *pflag.FlagSet) string {
	var name string
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed && name == "" {
			name = f.Name
		}
	})
	return name
}
