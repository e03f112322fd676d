package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/spf13/pflag"

	"github.com/imgctl/imgctl/images/awschannel"
	"github.com/imgctl/imgctl/images/awsclient"
	"github.com/imgctl/imgctl/images/awsgc"
	"github.com/imgctl/imgctl/images/publication"
	"github.com/imgctl/imgctl/images/store"
)

// gcAWSFlags are gc's --aws and the AWS connection flags (named as publish ami's).
type gcAWSFlags struct {
	enabled bool
	regions []string
	conn    awsFlags
}

func (f *gcAWSFlags) add(fs *pflag.FlagSet) {
	fs.BoolVar(&f.enabled, "aws", false, "also remove on AWS the AMIs and snapshots (tagged imgctl:image) of the images this gc leaves out of the store, and uploads that never completed")
	fs.StringSliceVar(&f.regions, "region", nil, "with --aws: clean this region too (repeat or comma-separate), besides those the store's publication records and AWS settings name")
	f.conn.addConnection(fs, "with --aws: ")
}

// gcAWS is what gc --aws prepares before the store gc: the places to clean, read from the
// records of images the store gc may remove, and the AWS clients (so that a missing credential
// fails before anything is deleted).
type gcAWS struct {
	regions, prefixes []string
	clients           *awsclient.Clients
}

func (f *gcAWSFlags) prepare(ctx context.Context, a *app, st *store.Store) (*gcAWS, error) {
	if !f.enabled {
		if len(f.regions) > 0 {
			return nil, errors.New("--region needs --aws")
		}
		if name := f.conn.connectionSet(); name != "" {
			return nil, fmt.Errorf("%s needs --aws", name)
		}
		return nil, nil
	}
	for _, r := range f.regions {
		if err := awsclient.CheckRegion(r); err != nil {
			return nil, fmt.Errorf("--region: %w", err)
		}
	}
	recs, err := publication.All(ctx, st)
	if err != nil {
		return nil, err
	}
	regions, prefixes := publication.Places(recs)
	settings, err := awschannel.LoadSettings(st.Dir())
	if err != nil {
		return nil, err
	}
	if settings != nil {
		regions = append(regions, settings.Regions...)
		prefixes = append(prefixes, settings.SSMPrefix)
	}
	regions = append(regions, f.regions...)
	slices.Sort(regions)
	slices.Sort(prefixes)
	regions, prefixes = slices.Compact(regions), slices.Compact(prefixes)
	if len(regions) == 0 {
		return nil, errors.New("no AWS region to clean: give --region (neither the store's publication records nor its AWS settings name one)")
	}
	clients, err := f.conn.clientsIn(ctx, a.logger(), regions[0])
	if err != nil {
		return nil, err
	}
	return &gcAWS{regions: regions, prefixes: prefixes, clients: clients}, nil
}

// collect removes on AWS what belongs to no image left in st once rep's images are gone.
func (g *gcAWS) collect(ctx context.Context, a *app, st *store.Store, rep store.GCReport, olderThan time.Duration, dryRun bool) (awsgc.Report, error) {
	imgs, bad, err := st.ListAll(ctx)
	if err != nil {
		return awsgc.Report{}, err
	}
	keep := map[digest.Digest]bool{}
	for _, i := range imgs {
		keep[i.Digest()] = true
	}
	for _, b := range bad { // unreadable, but still in the store
		keep[b.Descriptor.Digest] = true
	}
	for _, i := range rep.DeletedImages { // a dry run left them in
		delete(keep, i.Digest())
	}
	return awsgc.Collect(ctx, g.clients, awsgc.Options{
		Regions: g.regions, Keep: func(d digest.Digest) bool { return keep[d] }, OlderThan: olderThan,
		SSMPrefixes: g.prefixes, DryRun: dryRun, Logger: a.logger(),
	})
}

// printGCAWS prints what gc --aws did.
func printGCAWS(w io.Writer, regions []string, rep awsgc.Report, dryRun bool) {
	dereg, del := "deregistered", "deleted"
	if dryRun {
		dereg, del = "would deregister", "would delete"
	}
	for _, r := range rep.DeregisteredImages {
		fmt.Fprintf(w, "%s AMI %s (%s): %s\n", dereg, r.ID, r.Region, r.Reason)
	}
	for _, r := range rep.DeletedSnapshots {
		fmt.Fprintf(w, "%s snapshot %s (%s): %s\n", del, r.ID, r.Region, r.Reason)
	}
	for _, r := range rep.DeletedParameters {
		fmt.Fprintf(w, "%s SSM parameter %s (%s): %s\n", del, r.ID, r.Region, r.Reason)
	}
	fmt.Fprintf(w, "AWS (%s): %s %d AMIs, %s %d snapshots and %d parameters; kept %d\n", strings.Join(regions, ", "),
		dereg, len(rep.DeregisteredImages), strings.TrimPrefix(del, "would "), len(rep.DeletedSnapshots), len(rep.DeletedParameters), rep.Kept)
}
