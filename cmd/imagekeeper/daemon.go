package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

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

// Run runs the daemon until it is told to stop and has drained. It returns nil after
// a clean drain.
func (d *Daemon) Run(ctx context.Context) (err error) {
	log := d.Logger
	if log == nil {
		log = discardLogger()
	}
	if d.Getenv == nil {
		d.Getenv = os.Getenv
	}
	drainTimeout := orDefault(d.DrainTimeout, defaultDrainTimeout)
	watchEvery := orDefault(d.WatchInterval, defaultWatchInterval)
	notify := newNotifier(d.Getenv, os.Getpid())

	memLimit := setMemoryLimit(d.Getenv)
	if d.PprofListen != "" {
		ps, err := startPprof(d.PprofListen, log)
		if err != nil {
			return withExitCode(exitFailure, err)
		}
		defer ps.Close()
	}

	// cfgs owns the config in force from here on: the scheduler, the limits, the
	// metrics and retention ask it or subscribe to it, and a reload is one Apply. cfg
	// is the boot config: only what is wired once (state, listen, cloud) reads it.
	cfgs := policy.NewCoordinator(nil)
	cfg, err := cfgs.Load(d.ConfigPath)
	if err != nil {
		// Not logged as well: the error is printed once, by main, as every
		// command's is. A file that is not there or not readable is the caller's mistake (exit 2,
		// as for every command); one that does not validate is exit 1.
		code := exitFailure
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
			code = exitUsage
		}
		return withExitCode(code, err) // it names the file (FILE:LINE:COL for each problem)
	}
	// A hook whose program is missing would turn every image of its policy into a
	// skip (or a crash-consistent image): refuse to start instead.
	if errs := cfg.CheckHooks(); len(errs) > 0 {
		return withExitCode(exitFailure, fmt.Errorf("%s: %w", d.ConfigPath, errors.Join(errs...)))
	}
	watch := newFileWatch(d.ConfigPath)
	statePath := firstNonEmpty(d.StatePath, cfg.State)
	if statePath == "" {
		return withExitCode(exitFailure, fmt.Errorf("%s: no state database (set state:)", d.ConfigPath))
	}
	if err := os.MkdirAll(filepath.Dir(statePath), 0o750); err != nil {
		return withExitCode(exitFailure, fmt.Errorf("state directory: %w", err))
	}
	lock, err := acquireLock(statePath)
	if err != nil {
		return withExitCode(exitFailure, err)
	}
	defer lock.Release()

	st, err := store.Open(ctx, statePath, store.Options{})
	if err != nil {
		return withExitCode(exitFailure, fmt.Errorf("open state %s: %w", statePath, err))
	}
	defer st.Close()

	reg := d.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	for _, c := range []prometheus.Collector{collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		if err := reg.Register(c); err != nil && !errors.As(err, new(prometheus.AlreadyRegisteredError)) {
			return fmt.Errorf("register collector: %w", err)
		}
	}
	metrics := scheduler.NewMetrics(reg, scheduler.BuildInfo{Version: buildVersion(), Revision: buildRevision()})
	// Before anything else, the cloud included: a previous process killed between a
	// pre and its post hook left an application frozen; thaw it now.
	if n, err := scheduler.RunOwedPostHooks(ctx, st, log, metrics); err != nil {
		return withExitCode(exitFailure, err)
	} else if n > 0 {
		log.Warn("ran post hooks a previous process owed", "count", n)
	}

	health := newCloudHealth(time.Now, metrics.SetCloudUp)
	// connected is the cloud client once it authenticated; nil before.
	var connected atomic.Pointer[healthCloud]
	freshness := orDefault(d.CloudFreshness, defaultCloudFreshness)
	checks := []readinessCheck{
		{"config", func(context.Context) error {
			if cfgs.Current() == nil {
				return errors.New("not loaded")
			}
			return nil
		}},
		{"store", func(ctx context.Context) error {
			_, err := st.SchemaVersion(ctx)
			return err
		}},
		{"cloud", func(ctx context.Context) error {
			var probe func(context.Context) error
			if c := connected.Load(); c != nil {
				probe = func(ctx context.Context) error { _, err := c.Cloud.GetImage(ctx, probeImageID); return err }
			}
			return health.check(ctx, freshness, probe)
		}},
	}
	// Serve before connecting: with Keystone down at boot the daemon still shows
	// /metrics (imagekeeper_cloud_up 0) and a /readyz that names the cloud.
	srv, err := startHTTP(firstNonEmpty(d.Listen, cfg.Listen, defaultListen), reg, checks, log)
	if err != nil {
		return withExitCode(exitFailure, err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if serr := srv.Shutdown(sctx); serr != nil {
			log.Warn("http shutdown", "err", serr)
		}
	}()
	if d.Listening != nil {
		d.Listening(srv.Addr())
	}
	log.Info("imagekeeper daemon starting", "config", d.ConfigPath, "state", statePath, "listen", srv.Addr(),
		"owner", st.Owner())
	// READY=1 means "serving", not "the cloud answers": systemd would otherwise
	// restart a daemon whose cloud is down, which helps nothing and hides the cause.
	// /readyz says whether the cloud answers.
	if err := notify.Ready(); err != nil {
		log.Warn("sd_notify", "err", err)
	}
	var lastLoop atomic.Int64
	lastLoop.Store(time.Now().UnixNano())
	wdCtx, stopWatchdog := context.WithCancel(context.Background())
	var wdWG sync.WaitGroup
	wdWG.Add(1)
	go func() {
		defer wdWG.Done()
		// The main loop ticks every watchEvery; a loop silent for far longer is hung.
		notify.runWatchdog(wdCtx, func() bool {
			return time.Since(time.Unix(0, lastLoop.Load())) < 3*watchEvery+time.Minute
		})
	}()
	defer func() { stopWatchdog(); wdWG.Wait() }()

	raw, stopReason := d.connect(ctx, cfg, log, health, func(r openstack.Request) {
		metrics.ObserveCloudRequest(r.Service, r.Operation, r.Status, r.Duration)
	}, func() { lastLoop.Store(time.Now().UnixNano()) })
	if raw == nil {
		_ = notify.Stopping()
		d.audit(st, log, eventDaemonStopped, "stopped ("+stopReason+") before the cloud answered")
		log.Info("stopped before the cloud answered", "reason", stopReason)
		return nil
	}
	wc := &healthCloud{Cloud: raw, h: health}
	health.set(true, "") // connecting authenticated and read the catalog: the cloud answered
	connected.Store(wc)

	// Retention is requested after every settled run of a policy, by name; it runs
	// in the background under the scheduler's drain and decides by the config in
	// force when it gets the policy's lock, never by the one the run started with.
	var retention *scheduler.Retention
	runner := scheduler.NewRunner(scheduler.RunnerOptions{
		Cloud:        wc,
		Store:        st,
		Limits:       cfg.Limits,
		Logger:       log,
		Metrics:      metrics,
		PollInterval: d.RunnerPollInterval,
		Settled:      func(name string) { retention.Request(name) },
	})
	sched := scheduler.New(scheduler.Options{
		RunSlot: scheduler.RunnerSlots(runner),
		Prepare: runner.PrepareSlot,
		Ledger:  scheduler.StoreLedger(st),
		Metrics: metrics,
		Logger:  log,
	})
	retention = scheduler.NewRetention(runner, cfgs, scheduler.RetentionOptions{
		Go: sched.Go,
		// The recovery-point gauges move with every run; the periodic refresh alone
		// would lag a short schedule by up to its interval. Only this policy's gauges
		// (and the global ones) are recomputed: with many policies due at once, a
		// full refresh per run would be quadratic.
		Done: func(ctx context.Context, name string) {
			// A policy removed meanwhile keeps its images in the store, not in the metrics.
			p := cfgs.Current().Find(name)
			if p == nil {
				return
			}
			if err := metrics.RefreshPolicy(ctx, st, p, time.Now()); err != nil && ctx.Err() == nil {
				log.Warn("refresh metrics after run", "policy", name, "err", err)
			}
		},
	})
	// A reload is one Apply: the limits, the schedules and the metrics follow it
	// here; retention and resumed work ask cfgs when they decide.
	cfgs.Subscribe(func(cfg *policy.Config) { runner.SetLimits(cfg.Limits) })
	cfgs.Subscribe(sched.Swap)
	cfgs.Subscribe(func(cfg *policy.Config) {
		metrics.ConfigReloaded(true, time.Now())
		metrics.RefreshPeriods(cfg, time.Now())
	})

	// Read before the scheduler starts: every slot still running now was left so by
	// a previous process (the lock rules out another daemon).
	interrupted, err := runner.InterruptedSlots(ctx)
	if err != nil {
		return withExitCode(exitFailure, err)
	}
	if err := sched.Start(ctx, cfg); err != nil {
		return withExitCode(exitFailure, err)
	}
	d.cfgs.Store(cfgs)

	// The control socket: run, prune, reconcile and status of a client run here, on
	// this config, lineage, cloud and runner. Their context ends only when the drain
	// gives up on them, as the scheduler's runs do.
	ctlCtx, ctlCancel := context.WithCancel(context.WithoutCancel(ctx))
	defer ctlCancel()
	env := &daemonEnv{config: cfgs.Current, cfgs: cfgs, store: st, cloud: wc, runner: runner,
		version: buildVersion(), revision: buildRevision(), started: time.Now()}
	ctl, err := startControl(ctlCtx, controlSocketPath(statePath), log, func(ctx context.Context, args []string, stdout, stderr io.Writer) int {
		cm := &Main{Stdin: strings.NewReader(""), Stdout: stdout, Stderr: stderr, Getenv: d.Getenv,
			ProgressEvery: d.ProgressEvery, daemon: env}
		return cm.Run(ctx, args)
	})
	if err != nil {
		return withExitCode(exitFailure, err)
	}
	defer ctl.StopAccepting()
	metrics.ConfigReloaded(true, time.Now())
	sched.Go("resume", func(ctx context.Context) error {
		// Interrupted slots first: each re-run claims and waits for its own images,
		// so that the slot's outcome reflects them; ResumeWaits then takes the rest.
		// Both ask cfgs as they go: a reload while they wait counts.
		serr := runner.ResumeInterruptedSlots(ctx, cfgs, interrupted)
		return errors.Join(serr, runner.ResumeWaits(ctx, cfgs))
	})
	// Restore drills (verify: blocks) run on their schedules; leftovers of drills a
	// crash or a drain interrupted are deleted at start and periodically.
	initDrillMetrics(ctx, st, metrics, cfg, log)
	cfgs.Subscribe(func(cfg *policy.Config) { initDrillMetrics(ctx, st, metrics, cfg, log) })
	// A shutdown stops them at once (drillsStop, before the drain): a drill is not
	// worth waiting for, but the drill in flight still deletes what it booted.
	drillsCtx, drillsStop := context.WithCancel(ctx)
	defer drillsStop()
	sched.Go("drills", func(runCtx context.Context) error {
		ctx, cancel := context.WithCancel(drillsCtx)
		defer cancel()
		stop := context.AfterFunc(runCtx, cancel)
		defer stop()
		return runner.WatchDrills(ctx, cfgs.Current, scheduler.DrillLoopOptions{CleanupInterval: d.DrillCleanupInterval})
	})
	d.audit(st, log, eventDaemonStarted, fmt.Sprintf("pid %d, config %s version %s, %d policies",
		os.Getpid(), d.ConfigPath, cfg.Version, len(cfg.Policies)))
	log.Info("imagekeeper daemon serving", "config", d.ConfigPath, "state", statePath, "listen", srv.Addr(), "control_socket", ctl.path,
		"policies", len(cfg.Policies), "config_version", cfg.Version, "memory_limit_mib", memLimit>>20, "owner", st.Owner())
	if d.Started != nil {
		d.Started(srv.Addr(), st)
	}
	wdWG.Add(1)
	go func() {
		defer wdWG.Done()
		// The gauges derived from the store are computed once, off the main loop
		// (readiness does not wait for a big lineage); runs and reconciles keep them
		// current after that. The loop only recomputes schedule periods that went
		// stale (a reload, a day old), which reads no store. It stops before the
		// store closes.
		if err := metrics.Refresh(wdCtx, st, cfgs.Current(), time.Now()); err != nil && wdCtx.Err() == nil {
			log.Warn("refresh metrics", "err", err)
		}
		compactLineage(wdCtx, st, sched.Config(), log)
		t := time.NewTicker(defaultRefreshInterval)
		defer t.Stop()
		for {
			metrics.RefreshPeriods(cfgs.Current(), time.Now())
			select {
			case <-wdCtx.Done():
				return
			case <-t.C:
			}
		}
	}()

	wdWG.Add(1)
	go func() {
		defer wdWG.Done()
		// Images failed by wait_timeout are watched through their late window and
		// promoted to good if they complete (image_late_good).
		_ = runner.WatchLate(wdCtx)
	}()

	wdWG.Add(1)
	go func() {
		defer wdWG.Done()
		// The periodic reconcile reports drift, marks rows whose image is gone or
		// hollow (so they stop counting as backups), promotes late-good images and
		// deletes the leftover snapshots of images the journal recorded deleted; it
		// touches nothing it cannot prove ours.
		t := time.NewTicker(orDefault(d.ReconcileInterval, defaultReconcileInterval))
		defer t.Stop()
		for {
			select {
			case <-wdCtx.Done():
				return
			case <-t.C:
			}
			d.reconcile(wdCtx, runner, cfgs.Current(), log)
			if err := metrics.RefreshLeftover(wdCtx, st); err != nil && wdCtx.Err() == nil {
				log.Warn("refresh leftover snapshot gauge", "err", err)
			}
			compactLineage(wdCtx, st, sched.Config(), log)
		}
	}()

	reload := func(why string) {
		_ = notify.Reloading()
		defer func() { _ = notify.Ready() }()
		rerr := d.reload(cfgs, cfg, metrics, log, why)
		if rerr != nil {
			d.audit(st, log, eventConfigReload, "failed ("+why+"); kept the running config: "+rerr.Error())
		} else {
			cur := cfgs.Current()
			d.audit(st, log, eventConfigReload, fmt.Sprintf("%s: version %s, %d policies", why, cur.Version, len(cur.Policies)))
		}
		if d.Reloaded != nil {
			d.Reloaded(rerr)
		}
	}

	tick := time.NewTicker(watchEvery)
	defer tick.Stop()
	reason := ""
loop:
	for {
		select {
		case <-ctx.Done():
			reason = whyStopped(ctx)
			break loop
		case <-d.Reload:
			// Named for what sends it in production, as the audit always said.
			reload("SIGHUP")
		case <-tick.C:
			lastLoop.Store(time.Now().UnixNano())
			if watch.changed() {
				reload("policy file changed")
			}
		}
	}

	// Drain: no new slots, in-flight runs finish within the timeout, a second signal
	// stops waiting. Images still being waited on stay "creating" in the store and
	// the next start resumes them.
	log.Info("stopping: draining in-flight runs", "reason", reason, "in_flight", sched.InFlight(),
		"drain_timeout", drainTimeout)
	_ = notify.Stopping()
	srv.Draining()
	dctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	go func() {
		select {
		case <-dctx.Done():
		case <-d.Abort:
			log.Warn("second signal: not waiting for in-flight runs any longer")
			cancel()
		}
	}()
	ctl.StopAccepting()
	drillsStop()
	derr := sched.Drain(dctx, cancelGrace)
	if !ctl.Wait(dctx) {
		log.Warn("control socket: commands still running at the end of the drain; cancelling them")
		ctlCancel()
		gctx, gcancel := context.WithTimeout(context.Background(), cancelGrace)
		ctl.Wait(gctx)
		gcancel()
	}
	cancel()
	if derr != nil {
		d.audit(st, log, eventDaemonStopped, "stopped ("+reason+") before in-flight runs finished; waits resume on the next start")
	} else {
		d.audit(st, log, eventDaemonStopped, "stopped ("+reason+") after a clean drain")
	}
	if d.BeforeClose != nil {
		d.BeforeClose()
	}
	if derr != nil {
		return withExitCode(exitFailure, derr)
	}
	log.Info("stopped after a clean drain")
	return nil
}

// reload parses, validates and compiles the policy file off to the side and applies
// it to the config owner, which hands it to the scheduler and the limits; retention
// and the metrics ask the owner when they decide. On any error nothing changes.
func (d *Daemon) reload(cfgs *policy.Coordinator, boot *policy.Config, m *scheduler.Metrics, log *slog.Logger, why string) error {
	old := cfgs.Current()
	cfg, err := cfgs.Load(d.ConfigPath)
	if err != nil {
		logConfigErrors(log, "reload failed; keeping the running config", err)
		m.ConfigReloaded(false, time.Now())
		return err
	}
	// These are wired once at start; changing them needs a restart.
	for _, c := range []struct{ name, was, now string }{
		{"state", boot.State, cfg.State}, {"listen", boot.Listen, cfg.Listen}, {"cloud", boot.Cloud, cfg.Cloud},
	} {
		if c.was != c.now {
			log.Warn("reload: "+c.name+" changed; it takes effect on restart", "was", c.was, "now", c.now)
		}
	}
	for _, herr := range cfg.CheckHooks() {
		// The reload is applied (the rest of it is valid); the hook fails when it runs
		// and its policy's on_failure decides, until the file is fixed.
		log.Error("reload: a hook command cannot run", "err", herr)
	}
	log.Info("config reloaded", "why", why, "config_version", cfg.Version, "previous_config_version", old.Version,
		"policies", len(cfg.Policies))
	return nil
}

func (d *Daemon) audit(st *store.Store, log *slog.Logger, kind, msg string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := st.AddEvent(ctx, store.Event{Kind: kind, Message: msg}); err != nil {
		log.Warn("record daemon event", "kind", kind, "err", err)
	}
}

// logConfigErrors logs every policy error on a line of its own, as validate prints
// them, so a failed reload reads like `imagekeeper validate`.
func logConfigErrors(log *slog.Logger, msg string, err error) {
	var pe policy.Errors
	if errors.As(err, &pe) {
		for _, e := range pe {
			log.Error(msg, "err", e.Error())
		}
		return
	}
	log.Error(msg, "err", err)
}

// connect builds the cloud client, retrying with backoff until the cloud answers
// or the daemon is told to stop. A daemon that exited when Keystone is down at boot
// would leave no metrics and no hint of the cause; this one serves meanwhile, and
// its /readyz and imagekeeper_cloud_up name the cloud. alive is called while it
// waits, for the watchdog. It returns the client, or nil and why it stopped.
func (d *Daemon) connect(ctx context.Context, cfg *policy.Config, log *slog.Logger, health *cloudHealth,
	observe func(openstack.Request), alive func()) (cloud.Cloud, string) {
	newCloud := d.NewCloud
	if newCloud == nil {
		newCloud = wireCloud
	}
	delay := orDefault(d.ConnectBackoff, defaultConnectBackoff)
	maxDelay := orDefault(d.ConnectMaxBackoff, defaultConnectMaxBackoff)
	tick := time.NewTicker(orDefault(d.WatchInterval, defaultWatchInterval))
	defer tick.Stop()
	// wait returns "" once done is closed or after is ready, else why the daemon
	// must stop.
	wait := func(done <-chan struct{}, after <-chan time.Time) string {
		for {
			select {
			case <-done:
				return ""
			case <-after:
				return ""
			case <-tick.C:
				alive()
			case <-ctx.Done():
				return whyStopped(ctx)
			case <-d.Reload:
				log.Info("SIGHUP before the cloud answered: a changed policy file is applied once the schedules start")
			}
		}
	}
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		var c cloud.Cloud
		var err error
		go func() {
			defer close(done)
			c, err = newCloud(actx, cfg, log, observe)
		}()
		stop := wait(done, nil)
		cancel()
		<-done
		if stop != "" {
			return nil, stop
		}
		if err == nil {
			if attempt > 1 {
				log.Info("connected to the cloud", "attempt", attempt)
			}
			return c, ""
		}
		health.fail(err.Error())
		log.Error("cannot connect to the cloud; serving /metrics and retrying", "err", err, "attempt", attempt,
			"retry_in", delay.String())
		timer := time.NewTimer(delay)
		stop = wait(nil, timer.C)
		timer.Stop()
		if stop != "" {
			return nil, stop
		}
		delay = min(2*delay, maxDelay)
	}
}

// whyStopped says why ctx ended, for the log and the audit: the signal main
// cancelled it with ("signal terminated"), or "context cancelled".
func whyStopped(ctx context.Context) string {
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause.Error()
	}
	return "context cancelled"
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

// compactLineage moves the deleted images older than lineage_retention to the
// archive, in short transactions that never hold the writer for long. It runs
// once at start and after every periodic reconcile.
func compactLineage(ctx context.Context, st *store.Store, cfg *policy.Config, log *slog.Logger) {
	if cfg == nil || cfg.LineageRetention <= 0 {
		return
	}
	moved, err := st.CompactLineage(ctx, time.Now().Add(-cfg.LineageRetention))
	if err != nil && ctx.Err() == nil {
		log.Warn("compact the lineage", "err", err, "moved", moved)
		return
	}
	if moved > 0 {
		log.Info("deleted images moved to the lineage archive", "moved", moved, "lineage_retention", cfg.LineageRetention.String())
	}
}

// reconcile runs one reconcile pass without fix and logs what it found.
func (d *Daemon) reconcile(ctx context.Context, runner *scheduler.Runner, cfg *policy.Config, log *slog.Logger) {
	rep, err := runner.Reconcile(ctx, cfg, false)
	if err != nil {
		if ctx.Err() == nil {
			log.Warn("reconcile", "err", err)
		}
		return
	}
	attrs := []any{"cloud_images", rep.CloudImages}
	drift := 0
	for cat, n := range rep.Counts {
		attrs = append(attrs, string(cat), n)
		drift += n
	}
	for cat, n := range rep.Fixed {
		attrs = append(attrs, "fixed_"+string(cat), n)
	}
	if drift > 0 {
		log.Warn("reconcile found drift between the cloud and the lineage; see `imagekeeper reconcile`", attrs...)
	} else {
		log.Debug("reconcile: cloud and lineage agree", attrs...)
	}
	d.checkForeignStamps(ctx, runner, cfg, log)
}

// checkForeignStamps warns about images that carry our policy names but another
// owner id: nothing of ours sees them again, and a lost lineage is the usual cause.
func (d *Daemon) checkForeignStamps(ctx context.Context, runner *scheduler.Runner, cfg *policy.Config, log *slog.Logger) {
	byOwner, err := runner.ForeignStamps(ctx, cfg)
	if err != nil {
		if ctx.Err() == nil {
			log.Warn("look for images of our policies stamped by another owner", "err", err)
		}
		return
	}
	for _, owner := range scheduler.Owners(byOwner) {
		log.Warn("images of this config's policies carry another owner id: nothing prunes or reports them; if the "+
			"lineage was lost, stop the daemon and run `imagekeeper recover --owner "+owner+"`",
			"foreign_owner", owner, "images", byOwner[owner])
	}
}

// initDrillMetrics exports the drill series of every policy with a verify block,
// the last successful drill's time read from the lineage.
func initDrillMetrics(ctx context.Context, st *store.Store, m *scheduler.Metrics, cfg *policy.Config, log *slog.Logger) {
	okAt, last, err := st.LastVerified(ctx)
	if err != nil {
		log.Warn("read last restore drills", "err", err)
	}
	for _, p := range cfg.Policies {
		if p.Verify == nil {
			continue
		}
		m.InitDrills(p.Name, drillPeriod(p.Verify.Schedule))
		m.SetLastVerified(p.Name, okAt[p.Name])
		m.SetLastVerifyResult(p.Name, last[p.Name])
	}
}

// drillPeriod is the longest gap between drills over the coming week, as the
// schedule period gauge is for slots.
func drillPeriod(s *policy.Schedule) time.Duration {
	var longest time.Duration
	t := s.Next(time.Now())
	end := t.Add(7 * 24 * time.Hour)
	for i := 0; i < 10000 && t.Before(end); i++ {
		n := s.Next(t)
		longest = max(longest, n.Sub(t))
		t = n
	}
	return longest
}
