package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
)

func init() {
	register(command{
		name:    "simcloud",
		summary: "run a simulated OpenStack (Keystone, Nova, Glance, Cinder) for tests and demos",
		run:     runSimcloud,
	})
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
func runSimcloud(ctx context.Context, m *Main, args []string) error {
	fs := newFlagSet(m, "simcloud")
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on")
	servers := fs.Int("servers", 6, "number of simulated servers")
	cloudsYAML := fs.String("clouds-yaml", "", "write a clouds.yaml with a cloud named simcloud to this `path`")
	seed := fs.Int64("seed", 1, "seed for the generated ids (mixed with a per-start value unless --deterministic-ids)")
	deterministic := fs.Bool("deterministic-ids", false, "make the ids depend on --seed alone: the same after every start (a real cloud never reuses an id)")
	computeVersion := fs.String("compute-version", simcloud.DefaultComputeVersion, "maximum compute microversion")
	computeProjectID := fs.Bool("compute-project-id", false, "put the project id in the catalog's compute endpoint (/v2.1/{project_id}, Huawei's form; Zed's default has none)")
	imageBuild := fs.Duration("image-build-time", simcloud.DefaultImageBuildTime, "time an image-backed snapshot takes to become active")
	snapBuild := fs.Duration("snapshot-build-time", simcloud.DefaultSnapshotBuildTime, "time a volume snapshot stays creating")
	verbose := fs.Bool("v", false, "log every request")
	if err := fs.parse(args, 0); err != nil {
		return err
	}
	if *servers < 0 {
		return usageError("--servers must be >= 0, got %d", *servers)
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(m.Stderr, &slog.HandlerOptions{Level: level}))

	sim := simcloud.New(simcloud.Options{
		Seed: *seed, DeterministicIDs: *deterministic, ComputeVersion: *computeVersion,
		ComputeProjectID: *computeProjectID, Logger: logger,
		ImageBuildTime: *imageBuild, SnapshotBuildTime: *snapBuild,
	})
	for _, spec := range simcloudFleet(*servers) {
		sim.AddServer(spec)
	}
	if err := sim.Start(*listen); err != nil {
		return err
	}
	defer sim.Close()
	if *cloudsYAML != "" {
		if err := os.WriteFile(*cloudsYAML, sim.CloudsYAML("simcloud"), 0o600); err != nil {
			return fmt.Errorf("write clouds.yaml: %w", err)
		}
	}
	fmt.Fprintf(m.Stdout, "simcloud listening on %s\n", sim.URL())
	if *cloudsYAML != "" {
		fmt.Fprintf(m.Stdout, "clouds.yaml written to %s: export OS_CLIENT_CONFIG_FILE=%s OS_CLOUD=simcloud\n", *cloudsYAML, *cloudsYAML)
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
