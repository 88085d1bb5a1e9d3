package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"sort"
	"strings"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/cloud/openstack"
	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/store"
)

// wireConfig loads the policy file for a command that does work. Every validation
// problem is printed on stderr as FILE:LINE:COL: ... (exit 1); an unreadable file is
// exit 2, as in validate.
func wireConfig(m *Main, path string) (*policy.Config, error) {
	cfg, err := policy.Load(path)
	var perrs policy.Errors
	switch {
	case errors.As(err, &perrs):
		for _, e := range perrs {
			fmt.Fprintln(m.Stderr, e.Error())
		}
		return nil, withExitCode(exitFailure, fmt.Errorf("%s is not valid (%d problems; see above)", path, len(perrs)))
	case errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission):
		return nil, withExitCode(exitUsage, err)
	case err != nil:
		return nil, withExitCode(exitFailure, err)
	}
	return cfg, nil
}

// wirePolicy finds a policy by name; an unknown name is a usage error that lists
// the names the file has.
func wirePolicy(cfg *policy.Config, name string) (*policy.Policy, error) {
	var names []string
	for _, p := range cfg.Policies {
		if p.Name == name {
			return p, nil
		}
		names = append(names, p.Name)
	}
	sort.Strings(names)
	return nil, usageError("no policy %q in %s (policies: %s)", name, cfg.Path, strings.Join(names, ", "))
}

// wireStore opens the lineage database the config names.
func wireStore(ctx context.Context, cfg *policy.Config) (*store.Store, error) {
	if cfg.State == "" {
		return nil, withExitCode(exitUsage, fmt.Errorf("%s: no state database configured (state:)", cfg.Path))
	}
	st, err := store.Open(ctx, cfg.State, store.Options{})
	if err != nil {
		return nil, err
	}
	return st, nil
}

// wireCloud opens the cloud the config names (a clouds.yaml entry; OS_CLOUD when the
// config names none). observe, when set, sees every HTTP exchange (metrics).
// Tests replace it to put a fake in.
var wireCloud = func(ctx context.Context, cfg *policy.Config, log *slog.Logger, observe func(openstack.Request)) (cloud.Cloud, error) {
	// Glance answers 25 images a page unless asked for more; a wait polls every image
	// of a slot in one listing, so ask for the usual api_limit_max (clouds cap it).
	c, err := openstack.New(ctx, openstack.Options{CloudName: cfg.Cloud, Observe: observe, Logger: log, PageSize: 1000})
	if err != nil {
		return nil, fmt.Errorf("connect to cloud %q: %w", cfg.Cloud, err)
	}
	return c, nil
}

// checkOutput validates the -o flag shared by the read commands.
func checkOutput(o string) error {
	if o != "table" && o != "json" {
		return usageError("-o %q: use table or json", o)
	}
	return nil
}
