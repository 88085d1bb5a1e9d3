package main

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/cloud/openstack"
	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/scheduler"
	"github.com/imagekeeper/imagekeeper/store"
)

// Defaults of the daemon.
const (
	// defaultDrainTimeout is how long a stopping daemon lets in-flight runs finish;
	// the unit's TimeoutStopSec must stay above it.
	defaultDrainTimeout = 5 * time.Minute
	// defaultWatchInterval is how often the policy file is checked for changes.
	defaultWatchInterval = 3 * time.Second
	// defaultCloudFreshness is how long /readyz trusts what the last request said of
	// the cloud; a quiet daemon's /readyz asks the cloud itself after that, so that
	// an outage (or its end) shows within it.
	defaultCloudFreshness = 30 * time.Second
	// defaultConnectBackoff and defaultConnectMaxBackoff space the attempts to
	// authenticate while the cloud does not answer at start.
	defaultConnectBackoff    = 2 * time.Second
	defaultConnectMaxBackoff = 2 * time.Minute
	// defaultReconcileInterval is how often the daemon reconciles: often enough that
	// a leftover snapshot does not linger for long, rare enough that listing every
	// stamped image is a small share of the API budget.
	defaultReconcileInterval = 15 * time.Minute
	// defaultRefreshInterval is how often stale schedule periods are recomputed (the
	// store-derived gauges move with runs, not with a timer).
	defaultRefreshInterval = 30 * time.Second
	// cancelGrace is how long runs get to return once a drain gives up on them.
	cancelGrace = 10 * time.Second
)

// Event kinds the daemon adds to the lineage audit.
const (
	eventDaemonStarted = "daemon_started"
	eventDaemonStopped = "daemon_stopped"
	eventConfigReload  = "config_reloaded"
)

// daemonOptions are the flags of `imagekeeper daemon`.
type daemonOptions struct {
	*common
	drain     time.Duration
	pprof     string
	reconcile time.Duration
}

// newDaemonCommand builds `imagekeeper daemon`.
func newDaemonCommand(m *Main) *cobra.Command {
	o := &daemonOptions{}
	cmd := &cobra.Command{
		Use:   "daemon [--config FILE] [--drain-timeout 5m] [--pprof 127.0.0.1:PORT]",
		Short: "run the schedules (the systemd service)",
		Long: `Runs the policies' schedules: the systemd service. SIGHUP or a change of the
file reloads it; SIGTERM/SIGINT drain in-flight runs, a second one stops waiting.`,
		Example: `  imagekeeper daemon --config /etc/imagekeeper/imagekeeper.yaml --log-format json`,
		Args:    noArgs,
		RunE:    func(cmd *cobra.Command, _ []string) error { return runDaemon(cmd.Context(), m, o) },
	}
	o.common = newCommon(m, cmd).withConfig().withLogs("info")
	cmd.Flags().DurationVar(&o.drain, "drain-timeout", defaultDrainTimeout, "how long in-flight runs may finish on SIGTERM/SIGINT")
	cmd.Flags().StringVar(&o.pprof, "pprof", "", "serve net/http/pprof on this loopback address, e.g. 127.0.0.1:6060 (off when empty)")
	cmd.Flags().DurationVar(&o.reconcile, "reconcile-interval", defaultReconcileInterval,
		"how often the daemon diffs the cloud against the lineage (marks gone and hollow images, promotes late ones)")
	return cmd
}

func runDaemon(ctx context.Context, m *Main, o *daemonOptions) error {
	if o.drain <= 0 {
		return usageError("--drain-timeout must be positive")
	}
	if o.reconcile <= 0 {
		return usageError("--reconcile-interval must be positive")
	}
	if o.pprof != "" {
		if err := checkLoopback(o.pprof); err != nil {
			return usageError("%v", err)
		}
	}
	d := &Daemon{
		ConfigPath:   o.config,
		DrainTimeout: o.drain,
		Logger:       o.log,
		Getenv:       m.Getenv,
		Reload:       m.reloads(),
		Abort:        m.Abort,
		PprofListen:  o.pprof,
		// The soak runs it every few seconds, so that hollow and late images are
		// settled within a sub-minute schedule.
		ReconcileInterval: o.reconcile,
	}
	return d.Run(ctx)
}

// Daemon is `imagekeeper daemon` as a value: tests and the demo run it in-process
// with a temp database and a simulated cloud. It knows no signals: cancelling Run's
// context stops it (main cancels it on SIGTERM/SIGINT), a value on Reload reloads.
type Daemon struct {
	// ConfigPath is the policy file.
	ConfigPath string
	// DrainTimeout bounds how long in-flight runs may finish after SIGTERM/SIGINT;
	// zero means defaultDrainTimeout.
	DrainTimeout time.Duration
	// Logger receives the daemon's log; nil discards.
	Logger *slog.Logger
	// Getenv reads NOTIFY_SOCKET and WATCHDOG_USEC; nil means os.Getenv.
	Getenv func(string) string
	// Reload delivers reload requests (main sends one per SIGHUP); nil means none
	// come, and the policy file's watcher alone reloads.
	Reload <-chan struct{}
	// Abort, once closed, ends a drain at once: in-flight runs are cancelled instead
	// of awaited (main closes it on a second SIGTERM/SIGINT). Nil means never.
	Abort <-chan struct{}
	// StatePath and Listen, when set, override the policy file's state and listen.
	StatePath, Listen string
	// PprofListen, when set, serves net/http/pprof there (loopback only; off by
	// default): operators can profile a daemon in production.
	PprofListen string
	// NewCloud builds the cloud client; nil means the OpenStack adapter reading
	// clouds.yaml for cfg.Cloud (or OS_CLOUD).
	NewCloud func(ctx context.Context, cfg *policy.Config, log *slog.Logger, observe func(openstack.Request)) (cloud.Cloud, error)
	// WatchInterval is how often the policy file is polled; zero means 3 s.
	WatchInterval time.Duration
	// CloudFreshness is how long /readyz trusts the last request's result before it
	// asks the cloud itself; zero means 30 s.
	CloudFreshness time.Duration
	// ConnectBackoff is the first wait between attempts to connect to the cloud at
	// start, doubled up to ConnectMaxBackoff; zero means 2 s and 2 min.
	ConnectBackoff, ConnectMaxBackoff time.Duration
	// Listening, when set, is called once /metrics, /healthz and /readyz serve,
	// before the cloud is connected.
	Listening func(addr string)
	// RunnerPollInterval is passed to the backup runner (image waits); zero leaves its
	// default.
	RunnerPollInterval time.Duration
	// DrillCleanupInterval is how often leftover drill servers and volumes are looked
	// for (scheduler.DefaultDrillCleanupInterval when zero).
	DrillCleanupInterval time.Duration
	// ReconcileInterval is how often the cloud is diffed against the lineage (and
	// leftover snapshots of deleted images are cleaned); zero means 15 min.
	ReconcileInterval time.Duration
	// Registry is the private metrics registry; nil means a new one.
	Registry *prometheus.Registry
	// Started, when set, is called once the schedules run (the cloud answered), with
	// the HTTP address and the open store (the demo reads its events).
	Started func(addr string, st *store.Store)
	// Reloaded, when set, is called after every reload attempt with its error.
	Reloaded func(err error)
	// ProgressEvery is the ProgressEvery of the commands run through the control
	// socket; zero means theirs.
	ProgressEvery time.Duration
	// BeforeClose, when set, is called after the drain, before the store closes.
	BeforeClose func()

	// cfgs is the running daemon's config owner, for tests.
	cfgs atomic.Pointer[policy.Coordinator]
}

// currentVersion returns the version of the config the daemon runs, "" before start.
func (d *Daemon) currentVersion() string {
	if c := d.cfgs.Load(); c != nil {
		if cfg := c.Current(); cfg != nil {
			return cfg.Version
		}
	}
	return ""
}

// Run runs the daemon until ctx ends and it has drained; it returns nil after a
// clean drain. It reads as the phases of lifecycle.go: every phase pushes the closer
// of what it opens onto one cleanup stack, unwound here last, so that a failure
// half-way closes exactly what was opened, newest first.
func (d *Daemon) Run(ctx context.Context) error {
	r := d.newRun()
	defer r.cleanup.unwind()
	// The phases before serve do their I/O on a context that the stop does not
	// cancel: a stop while the daemon opens its lineage takes effect at the wait for
	// the cloud, after READY, with an audit line, not as a failed read.
	life := context.WithoutCancel(ctx)
	if err := r.open(life); err != nil {
		return err
	}
	c, reason := r.connect(ctx)
	if c == nil {
		return r.stoppedBeforeCloud(reason)
	}
	r.wire(c)
	if err := r.start(life); err != nil {
		return err
	}
	return r.stop(r.serve(ctx))
}

// logConfigErrors logs every policy error on a line of its own, as validate prints
// them, so a failed reload reads like `imagekeeper validate`.
func logConfigErrors(log *slog.Logger, msg string, err error) {
	var pe policy.Errors
	if errors.As(err, &pe) {
		for _, e := range pe {
			log.Error(msg, scheduler.LogKeyErr, e.Error())
		}
		return
	}
	log.Error(msg, scheduler.LogKeyErr, err)
}

// whyStopped says why ctx ended, for the log and the audit: the cause it was
// cancelled with (main gives the signal, "signal terminated"), else "context
// cancelled".
func whyStopped(ctx context.Context) string {
	cause := context.Cause(ctx)
	if cause == nil || errors.Is(cause, context.Canceled) || errors.Is(cause, context.DeadlineExceeded) {
		return "context cancelled"
	}
	return cause.Error()
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

func firstNonEmpty(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}
