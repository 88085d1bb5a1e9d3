package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
)

// simcloudOptions are the flags of `imagekeeper simcloud`.
type simcloudOptions struct {
	listen           string
	servers          int
	cloudsYAML       string
	seed             int64
	deterministic    bool
	computeVersion   string
	computeProjectID bool
	imageBuild       time.Duration
	snapBuild        time.Duration
	verbose          bool
}

// newSimcloudCommand builds `imagekeeper simcloud`.
func newSimcloudCommand(m *Main) *cobra.Command {
	o := &simcloudOptions{}
	cmd := &cobra.Command{
		Use:   "simcloud [--listen ADDR] [--servers N] [--clouds-yaml PATH]",
		Short: "run a simulated OpenStack (Keystone, Nova, Glance, Cinder) for tests and demos",
		Long: `Serves a simulated OpenStack (Keystone, Nova, Glance, Cinder) on loopback until
Ctrl-C, for trying imagekeeper, the openstack CLI or a soak against it.`,
		Example: `  imagekeeper simcloud --clouds-yaml /tmp/clouds.yaml --servers 12
  OS_CLIENT_CONFIG_FILE=/tmp/clouds.yaml OS_CLOUD=simcloud openstack server list`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runSimcloud(cmd.Context(), m, o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", "127.0.0.1:0", "address to listen on")
	f.IntVar(&o.servers, "servers", 6, "number of simulated servers")
	f.StringVar(&o.cloudsYAML, "clouds-yaml", "", "write a clouds.yaml with a cloud named simcloud to this `path`")
	f.Int64Var(&o.seed, "seed", 1, "seed for the generated ids (mixed with a per-start value unless --deterministic-ids)")
	f.BoolVar(&o.deterministic, "deterministic-ids", false, "make the ids depend on --seed alone: the same after every start (a real cloud never reuses an id)")
	f.StringVar(&o.computeVersion, "compute-version", simcloud.DefaultComputeVersion, "maximum compute microversion")
	f.BoolVar(&o.computeProjectID, "compute-project-id", false, "put the project id in the catalog's compute endpoint (/v2.1/{project_id}, Huawei's form; Zed's default has none)")
	f.DurationVar(&o.imageBuild, "image-build-time", simcloud.DefaultImageBuildTime, "time an image-backed snapshot takes to become active")
	f.DurationVar(&o.snapBuild, "snapshot-build-time", simcloud.DefaultSnapshotBuildTime, "time a volume snapshot stays creating")
	f.BoolVarP(&o.verbose, "verbose", "v", false, "log every request")
	return cmd
}

// simcloudFleet returns the standalone simulator's servers: a mix of image- and
// volume-backed servers with backup tags, and (from three servers on) one in
// ERROR, so that every path of a backup run has something to act on.
func simcloudFleet(n int) []simcloud.ServerSpec {
	specs := make([]simcloud.ServerSpec, 0, n)
	azs := []string{"az-1", "az-2"}
	for i := range n {
		spec := simcloud.ServerSpec{
			Name: fmt.Sprintf("web-%02d", i+1),
			AZ:   azs[i%len(azs)],
			Tags: []string{"backup=daily", "env=prod"},
		}
		switch {
		case i%3 == 1:
			spec.Name = fmt.Sprintf("db-%02d", i+1)
			spec.Volumes = 1 + i%2
			spec.Tags = []string{"backup=daily", "env=prod", "tier=db"}
		case i%3 == 2:
			spec.Name = fmt.Sprintf("dev-%02d", i+1)
			spec.Tags = []string{"backup=weekly", "env=dev"}
		}
		if n >= 3 && i == n-1 {
			spec.Name = fmt.Sprintf("broken-%02d", i+1)
			spec.Status = "ERROR"
		}
		specs = append(specs, spec)
	}
	return specs
}

// runSimcloud serves a simulated cloud until ctx ends (Ctrl-C), for trying
// imagekeeper, the openstack CLI or a soak against it.
func runSimcloud(ctx context.Context, m *Main, o *simcloudOptions) error {
	if o.servers < 0 {
		return usageError("--servers must be >= 0, got %d", o.servers)
	}
	level := slog.LevelInfo
	if o.verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(m.Stderr, &slog.HandlerOptions{Level: level}))

	sim := simcloud.New(simcloud.Options{
		Seed: o.seed, DeterministicIDs: o.deterministic, ComputeVersion: o.computeVersion,
		ComputeProjectID: o.computeProjectID, Logger: logger,
		ImageBuildTime: o.imageBuild, SnapshotBuildTime: o.snapBuild,
	})
	for _, spec := range simcloudFleet(o.servers) {
		sim.AddServer(spec)
	}
	if err := sim.Start(o.listen); err != nil {
		return err
	}
	defer sim.Close()
	if o.cloudsYAML != "" {
		if err := os.WriteFile(o.cloudsYAML, sim.CloudsYAML("simcloud"), 0o600); err != nil {
			return fmt.Errorf("write clouds.yaml: %w", err)
		}
	}
	fmt.Fprintf(m.Stdout, "simcloud listening on %s\n", sim.URL())
	if o.cloudsYAML != "" {
		fmt.Fprintf(m.Stdout, "clouds.yaml written to %s: export OS_CLIENT_CONFIG_FILE=%s OS_CLOUD=simcloud\n", o.cloudsYAML, o.cloudsYAML)
	}
	<-ctx.Done()
	fmt.Fprintln(m.Stdout, "simcloud stopping")
	done := make(chan error, 1)
	go func() { done <- sim.Close() }()
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Second):
		return fmt.Errorf("simcloud did not stop within 5s")
	}
}
