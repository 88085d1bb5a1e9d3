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

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/cloud/openstack"
	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/scheduler"
	"github.com/imagekeeper/imagekeeper/store"
)

// The daemon's lifecycle, in phases (Alertmanager's app lifecycle is the model):
//
//	open     load the config, take the lock, open the lineage, build the metrics,
//	         serve HTTP and tell systemd READY: everything that needs no cloud
//	connect  wait for the cloud, retrying, while /readyz says why it is down
//	wire     the runner, the scheduler and retention, on the cloud
//	start    the schedules, the control socket and the background loops
//	serve    reload on request or when the policy file changes, until told to stop
//	stop     drain the work in flight and record why the daemon stopped
//
// Every phase pushes the closer of what it opens onto one cleanup stack, which Run
// unwinds last: a failure half-way closes exactly what was opened, newest first.

// cleanups is a LIFO stack of closers.
type cleanups struct {
	log   *slog.Logger
	steps []cleanupStep
}

// cleanupStep closes one thing a phase opened; name is for the debug log.
type cleanupStep struct {
	name  string
	close func()
}

// push adds the closer of what was just opened.
func (c *cleanups) push(name string, close func()) {
	c.steps = append(c.steps, cleanupStep{name: name, close: close})
}

// unwind runs the closers newest first, each once, and leaves the stack empty.
func (c *cleanups) unwind() {
	for len(c.steps) > 0 {
		s := c.steps[len(c.steps)-1]
		c.steps = c.steps[:len(c.steps)-1]
		s.close()
		c.log.Debug("closed", "what", s.name)
	}
}

// daemonRun is one run of a Daemon: what its phases opened, for the phases after
// them and for the cleanup stack.
type daemonRun struct {
	d       *Daemon
	log     *slog.Logger
	notify  *notifier
	cleanup cleanups

	// open
	cfgs      *policy.Coordinator // owns the config in force; a reload is one Apply
	boot      *policy.Config      // the config at start: state, listen and cloud are wired once, from it
	watch     *fileWatch
	statePath string
	st        *store.Store
	reg       *prometheus.Registry
	metrics   *scheduler.Metrics
	health    *cloudHealth
	srv       *httpServer
	memLimit  int64
	lastLoop  atomic.Int64    // when the main loop last ticked (Unix ns), for the watchdog
	bg        context.Context // the watchdog and the background loops; the cleanup stack ends it
	bgWG      sync.WaitGroup

	// connect and wire
	connected atomic.Pointer[healthCloud] // nil until the cloud answered
	shared    *scheduler.Shared
	runner    *scheduler.Runner
	sched     *scheduler.Scheduler

	// start
	ctl        *controlServer
	ctlCancel  context.CancelFunc // ends the control commands when the drain gives up on them
	drillsStop context.CancelFunc
	drained    bool // stop drained the scheduler: the cleanup stack need not
}

func (d *Daemon) newRun() *daemonRun {
	log := d.Logger
	if log == nil {
		log = discardLogger()
	}
	if d.Getenv == nil {
		d.Getenv = os.Getenv
	}
	return &daemonRun{d: d, log: log, notify: newNotifier(d.Getenv, os.Getpid()), cleanup: cleanups{log: log}}
}

// open builds everything the daemon needs before the cloud answers, and serves
// /metrics, /healthz and /readyz.
func (r *daemonRun) open(ctx context.Context) error {
	r.memLimit = setMemoryLimit(r.d.Getenv)
	if r.d.PprofListen != "" {
		ps, err := startPprof(r.d.PprofListen, r.log)
		if err != nil {
			return withExitCode(exitFailure, err)
		}
		r.cleanup.push("pprof server", func() { _ = ps.Close() })
	}
	if err := r.loadConfig(); err != nil {
		return err
	}
	if err := r.openLineage(ctx); err != nil {
		return err
	}
	if err := r.openMetrics(ctx); err != nil {
		return err
	}
	return r.serveHTTP()
}

// loadConfig loads the policy file into the config owner; the scheduler, the
// limits, the metrics and retention ask it or subscribe to it from here on.
func (r *daemonRun) loadConfig() error {
	path := r.d.ConfigPath
	r.cfgs = policy.NewCoordinator(nil)
	cfg, err := r.cfgs.Load(path)
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
		return withExitCode(exitFailure, fmt.Errorf("%s: %w", path, errors.Join(errs...)))
	}
	r.boot = cfg
	r.watch = newFileWatch(path)
	r.statePath = firstNonEmpty(r.d.StatePath, cfg.State)
	if r.statePath == "" {
		return withExitCode(exitFailure, fmt.Errorf("%s: no state database (set state:)", path))
	}
	return nil
}

// openLineage takes the database lock and opens the lineage.
func (r *daemonRun) openLineage(ctx context.Context) error {
	if err := os.MkdirAll(filepath.Dir(r.statePath), 0o750); err != nil {
		return withExitCode(exitFailure, fmt.Errorf("state directory: %w", err))
	}
	lock, err := acquireLock(r.statePath)
	if err != nil {
		return withExitCode(exitFailure, err)
	}
	r.cleanup.push("database lock", func() { _ = lock.Release() })
	st, err := store.Open(ctx, r.statePath, store.Options{})
	if err != nil {
		return withExitCode(exitFailure, fmt.Errorf("open state %s: %w", r.statePath, err))
	}
	r.cleanup.push("lineage", func() { _ = st.Close() })
	r.st = st
	return nil
}

// openMetrics registers the metrics and runs the post hooks a previous process
// owed.
func (r *daemonRun) openMetrics(ctx context.Context) error {
	reg := r.d.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	r.reg = reg
	for _, c := range []prometheus.Collector{collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		if err := reg.Register(c); err != nil && !errors.As(err, new(prometheus.AlreadyRegisteredError)) {
			return fmt.Errorf("register collector: %w", err)
		}
	}
	r.metrics = scheduler.NewMetrics(reg, scheduler.BuildInfo{Version: buildVersion(), Revision: buildRevision()})
	// Before anything else, the cloud included: a previous process killed between a
	// pre and its post hook left an application frozen; thaw it now.
	if n, err := scheduler.RunOwedPostHooks(ctx, r.st, r.log, r.metrics); err != nil {
		return withExitCode(exitFailure, err)
	} else if n > 0 {
		r.log.Warn("ran post hooks a previous process owed", "count", n)
	}
	r.health = newCloudHealth(time.Now, r.metrics.SetCloudUp)
	return nil
}

// serveHTTP serves /metrics, /healthz and /readyz before the cloud is connected:
// with Keystone down at boot the daemon still shows /metrics
// (imagekeeper_cloud_up 0) and a /readyz that names the cloud. It tells systemd
// READY and starts the watchdog.
func (r *daemonRun) serveHTTP() error {
	srv, err := startHTTP(firstNonEmpty(r.d.Listen, r.boot.Listen, defaultListen), r.reg, r.readinessChecks(), r.log)
	if err != nil {
		return withExitCode(exitFailure, err)
	}
	r.cleanup.push("http server", func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if serr := srv.Shutdown(sctx); serr != nil {
			r.log.Warn("http shutdown", scheduler.LogKeyErr, serr)
		}
	})
	r.srv = srv
	if r.d.Listening != nil {
		r.d.Listening(srv.Addr())
	}
	r.log.Info("imagekeeper daemon starting", "config", r.d.ConfigPath, "state", r.statePath, "listen", srv.Addr(),
		scheduler.LogKeyOwner, r.st.Owner())
	// READY=1 means "serving", not "the cloud answers": systemd would otherwise
	// restart a daemon whose cloud is down, which helps nothing and hides the cause.
	// /readyz says whether the cloud answers.
	if err := r.notify.Ready(); err != nil {
		r.log.Warn("sd_notify", scheduler.LogKeyErr, err)
	}
	bg, stop := context.WithCancel(context.Background())
	r.bg = bg
	r.cleanup.push("watchdog and background loops", func() { stop(); r.bgWG.Wait() })
	r.alive()
	watchEvery := r.watchEvery()
	r.goBackground(func(ctx context.Context) {
		// The main loop ticks every watchEvery; a loop silent for far longer is hung.
		r.notify.runWatchdog(ctx, func() bool {
			return time.Since(time.Unix(0, r.lastLoop.Load())) < 3*watchEvery+time.Minute
		})
	})
	return nil
}

// readinessChecks are what /readyz asks: the config, the lineage and the cloud.
func (r *daemonRun) readinessChecks() []readinessCheck {
	freshness := orDefault(r.d.CloudFreshness, defaultCloudFreshness)
	return []readinessCheck{
		{"config", func(context.Context) error {
			if r.cfgs.Current() == nil {
				return errors.New("not loaded")
			}
			return nil
		}},
		{"store", func(ctx context.Context) error {
			_, err := r.st.SchemaVersion(ctx)
			return err
		}},
		{"cloud", func(ctx context.Context) error {
			var probe func(context.Context) error
			if c := r.connected.Load(); c != nil {
				probe = func(ctx context.Context) error { _, err := c.Cloud.GetImage(ctx, probeImageID); return err }
			}
			return r.health.check(ctx, freshness, probe)
		}},
	}
}

// alive tells the watchdog the main loop (or the wait for the cloud) still runs.
func (r *daemonRun) alive() { r.lastLoop.Store(time.Now().UnixNano()) }

func (r *daemonRun) watchEvery() time.Duration {
	return orDefault(r.d.WatchInterval, defaultWatchInterval)
}

// goBackground runs fn until the cleanup stack ends the background loops; they
// stop before the lineage closes.
func (r *daemonRun) goBackground(fn func(ctx context.Context)) {
	r.bgWG.Add(1)
	go func() {
		defer r.bgWG.Done()
		fn(r.bg)
	}()
}

// connect builds the cloud client, retrying with backoff until the cloud answers
// or ctx ends. A daemon that exited when Keystone is down at boot would leave no
// metrics and no hint of the cause; this one serves meanwhile, and its /readyz and
// imagekeeper_cloud_up name the cloud. It returns the client, or nil and why it
// stopped.
func (r *daemonRun) connect(ctx context.Context) (cloud.Cloud, string) {
	newCloud := r.d.NewCloud
	if newCloud == nil {
		newCloud = wireCloud
	}
	delay := orDefault(r.d.ConnectBackoff, defaultConnectBackoff)
	maxDelay := orDefault(r.d.ConnectMaxBackoff, defaultConnectMaxBackoff)
	tick := time.NewTicker(r.watchEvery())
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
				r.alive()
			case <-ctx.Done():
				return whyStopped(ctx)
			case <-r.d.Reload:
				r.log.Info("SIGHUP before the cloud answered: a changed policy file is applied once the schedules start")
			}
		}
	}
	observe := func(req openstack.Request) {
		r.metrics.ObserveCloudRequest(req.Service, req.Operation, req.Status, req.Duration)
	}
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		var c cloud.Cloud
		var err error
		go func() {
			defer close(done)
			c, err = newCloud(actx, r.boot, r.log, observe)
		}()
		stop := wait(done, nil)
		cancel()
		<-done
		if stop != "" {
			return nil, stop
		}
		if err == nil {
			if attempt > 1 {
				r.log.Info("connected to the cloud", "attempt", attempt)
			}
			return c, ""
		}
		r.health.fail(err.Error())
		r.log.Error("cannot connect to the cloud; serving /metrics and retrying", scheduler.LogKeyErr, err, "attempt", attempt,
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

// stoppedBeforeCloud ends a run told to stop while it waited for the cloud: there
// is nothing to drain.
func (r *daemonRun) stoppedBeforeCloud(reason string) error {
	_ = r.notify.Stopping()
	r.audit(eventDaemonStopped, "stopped ("+reason+") before the cloud answered")
	r.log.Info("stopped before the cloud answered", scheduler.LogKeyReason, reason)
	return nil
}

// wire builds the runner, the scheduler and retention on the cloud that answered,
// and subscribes them to the config owner.
func (r *daemonRun) wire(raw cloud.Cloud) {
	wc := &healthCloud{Cloud: raw, h: r.health}
	r.health.set(true, "") // connecting authenticated and read the catalog: the cloud answered
	r.connected.Store(wc)

	// Retention is requested after every settled run of a policy, by name; it runs
	// in the background under the scheduler's drain and decides by the config in
	// force when it gets the policy's lock, never by the one the run started with.
	var retention *scheduler.Retention
	r.shared = scheduler.NewShared(scheduler.SharedOptions{
		Cloud:        wc,
		Store:        r.st,
		Limits:       r.boot.Limits,
		Logger:       r.log,
		Metrics:      r.metrics,
		PollInterval: r.d.RunnerPollInterval,
	})
	r.runner = scheduler.NewRunner(r.shared, scheduler.RunnerOptions{
		Settled: func(name string) { retention.Request(name) },
	})
	r.sched = scheduler.New(scheduler.Options{
		RunSlot: scheduler.RunnerSlots(r.runner),
		Prepare: r.runner.PrepareSlot,
		Ledger:  scheduler.StoreLedger(r.st),
		Metrics: r.metrics,
		Logger:  r.log,
	})
	retention = scheduler.NewRetention(r.shared, r.cfgs, scheduler.RetentionOptions{
		Go: r.sched.Go,
		// The recovery-point gauges move with every run; the periodic refresh alone
		// would lag a short schedule by up to its interval. Only this policy's gauges
		// (and the global ones) are recomputed: with many policies due at once, a
		// full refresh per run would be quadratic.
		Done: func(ctx context.Context, name string) {
			// A policy removed meanwhile keeps its images in the store, not in the metrics.
			p := r.cfgs.Current().Policy(name)
			if p == nil {
				return
			}
			if err := r.metrics.RefreshPolicy(ctx, r.st, p, time.Now()); err != nil && ctx.Err() == nil {
				r.log.Warn("refresh metrics after run", scheduler.LogKeyPolicy, name, scheduler.LogKeyErr, err)
			}
		},
	})
	// A reload is one Apply: the limits, the schedules and the metrics follow it
	// here; retention and resumed work ask cfgs when they decide.
	r.cfgs.Subscribe(func(cfg *policy.Config) { r.shared.SetLimits(cfg.Limits) })
	r.cfgs.Subscribe(r.sched.Swap)
	r.cfgs.Subscribe(func(cfg *policy.Config) {
		r.metrics.ConfigReloaded(true, time.Now())
		r.metrics.RefreshPeriods(cfg, time.Now())
	})
}

// start starts the schedules, the control socket, the resumption of interrupted
// work, the restore drills and the background loops.
func (r *daemonRun) start(ctx context.Context) error {
	// Read before the scheduler starts: every slot still running now was left so by
	// a previous process (the lock rules out another daemon).
	interrupted, err := r.runner.InterruptedSlots(ctx)
	if err != nil {
		return withExitCode(exitFailure, err)
	}
	if err := r.sched.Start(ctx, r.boot); err != nil {
		return withExitCode(exitFailure, err)
	}
	r.cleanup.push("scheduler", func() {
		if !r.drained { // a start that failed after this: cancel what already runs
			dctx, cancel := context.WithTimeout(context.Background(), cancelGrace)
			defer cancel()
			_ = r.sched.Drain(dctx, cancelGrace)
		}
	})
	r.d.cfgs.Store(r.cfgs)
	if err := r.startControl(ctx); err != nil {
		return err
	}
	r.metrics.ConfigReloaded(true, time.Now())
	r.sched.Go("resume", func(ctx context.Context) error {
		// Interrupted slots first: each re-run claims and waits for its own images,
		// so that the slot's outcome reflects them; ResumeWaits then takes the rest.
		// Both ask cfgs as they go: a reload while they wait counts.
		serr := r.runner.ResumeInterruptedSlots(ctx, r.cfgs, interrupted)
		return errors.Join(serr, r.runner.ResumeWaits(ctx, r.cfgs))
	})
	r.startDrills(ctx)
	cfg := r.boot
	r.audit(eventDaemonStarted, fmt.Sprintf("pid %d, config %s version %s, %d policies",
		os.Getpid(), r.d.ConfigPath, cfg.Version, len(cfg.Policies)))
	r.log.Info("imagekeeper daemon serving", "config", r.d.ConfigPath, "state", r.statePath, "listen", r.srv.Addr(),
		"control_socket", r.ctl.path, "policies", len(cfg.Policies), scheduler.LogKeyConfigVersion, cfg.Version,
		"memory_limit_mib", r.memLimit>>20, scheduler.LogKeyOwner, r.st.Owner())
	if r.d.Started != nil {
		r.d.Started(r.srv.Addr(), r.st)
	}
	r.goBackground(r.refreshLoop)
	r.goBackground(func(ctx context.Context) {
		// Images failed by wait_timeout are watched through their late window and
		// promoted to good if they complete (image_late_good).
		_ = scheduler.NewLateWatcher(r.shared).WatchLate(ctx)
	})
	r.goBackground(r.reconcileLoop)
	return nil
}

// startControl serves the control socket: run, prune, reconcile and status of a
// client run here, on this config, lineage, cloud and runner. Their context ends
// only when the drain gives up on them, as the scheduler's runs do.
func (r *daemonRun) startControl(ctx context.Context) error {
	ctlCtx, ctlCancel := context.WithCancel(ctx)
	env := &daemonEnv{config: r.cfgs.Current, cfgs: r.cfgs, store: r.st, cloud: r.connected.Load(), shared: r.shared, runner: r.runner,
		version: buildVersion(), revision: buildRevision(), started: time.Now()}
	ctl, err := startControl(ctlCtx, controlSocketPath(r.statePath), r.log, func(ctx context.Context, args []string, stdout, stderr io.Writer) int {
		cm := &Main{Stdin: strings.NewReader(""), Stdout: stdout, Stderr: stderr, Getenv: r.d.Getenv,
			ProgressEvery: r.d.ProgressEvery, daemon: env}
		return cm.Run(ctx, args)
	})
	if err != nil {
		ctlCancel()
		return withExitCode(exitFailure, err)
	}
	r.cleanup.push("control socket", func() { ctl.StopAccepting(); ctlCancel() })
	r.ctl, r.ctlCancel = ctl, ctlCancel
	return nil
}

// startDrills runs the restore drills (verify: blocks) on their schedules;
// leftovers of drills a crash or a drain interrupted are deleted at start and
// periodically.
func (r *daemonRun) startDrills(ctx context.Context) {
	initDrillMetrics(ctx, r.st, r.metrics, r.boot, r.log)
	r.cfgs.Subscribe(func(cfg *policy.Config) { initDrillMetrics(ctx, r.st, r.metrics, cfg, r.log) })
	// A shutdown stops them at once (drillsStop, before the drain): a drill is not
	// worth waiting for, but the drill in flight still deletes what it booted.
	drillsCtx, drillsStop := context.WithCancel(ctx)
	r.cleanup.push("restore drills", drillsStop)
	r.drillsStop = drillsStop
	r.sched.Go("drills", func(runCtx context.Context) error {
		ctx, cancel := context.WithCancel(drillsCtx)
		defer cancel()
		stop := context.AfterFunc(runCtx, cancel)
		defer stop()
		return scheduler.NewDriller(r.shared).WatchDrills(ctx, r.cfgs.Current, scheduler.DrillLoopOptions{CleanupInterval: r.d.DrillCleanupInterval})
	})
}

// serve runs the main loop until ctx ends, and returns why it ended. A reload
// request or a change of the policy file reloads; every tick tells the watchdog
// the loop is alive.
func (r *daemonRun) serve(ctx context.Context) string {
	tick := time.NewTicker(r.watchEvery())
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return whyStopped(ctx)
		case <-r.d.Reload:
			// Named for what sends it in production, as the audit always said.
			r.reload("SIGHUP")
		case <-tick.C:
			r.alive()
			if r.watch.changed() {
				r.reload("policy file changed")
			}
		}
	}
}

// reload parses, validates and compiles the policy file off to the side and applies
// it to the config owner, which hands it to the scheduler and the limits; retention
// and the metrics ask the owner when they decide. On any error nothing changes.
// systemd sees RELOADING then READY; the audit says what became of it.
func (r *daemonRun) reload(why string) {
	_ = r.notify.Reloading()
	defer func() { _ = r.notify.Ready() }()
	old := r.cfgs.Current()
	cfg, err := r.cfgs.Load(r.d.ConfigPath)
	if err != nil {
		logConfigErrors(r.log, "reload failed; keeping the running config", err)
		r.metrics.ConfigReloaded(false, time.Now())
		r.audit(eventConfigReload, "failed ("+why+"); kept the running config: "+err.Error())
	} else {
		// These are wired once at start; changing them needs a restart.
		for _, c := range []struct{ name, was, now string }{
			{"state", r.boot.State, cfg.State}, {"listen", r.boot.Listen, cfg.Listen}, {"cloud", r.boot.Cloud, cfg.Cloud},
		} {
			if c.was != c.now {
				r.log.Warn("reload: "+c.name+" changed; it takes effect on restart", "was", c.was, "now", c.now)
			}
		}
		for _, herr := range cfg.CheckHooks() {
			// The reload is applied (the rest of it is valid); the hook fails when it runs
			// and its policy's on_failure decides, until the file is fixed.
			r.log.Error("reload: a hook command cannot run", scheduler.LogKeyErr, herr)
		}
		r.log.Info("config reloaded", "why", why, scheduler.LogKeyConfigVersion, cfg.Version, "previous_config_version", old.Version,
			"policies", len(cfg.Policies))
		r.audit(eventConfigReload, fmt.Sprintf("%s: version %s, %d policies", why, cfg.Version, len(cfg.Policies)))
	}
	if r.d.Reloaded != nil {
		r.d.Reloaded(err)
	}
}

// stop drains: no new slots, in-flight runs finish within the drain timeout, Abort
// stops waiting. Images still being waited on stay "creating" in the store and the
// next start resumes them. It records why the daemon stopped and returns nil after
// a clean drain.
func (r *daemonRun) stop(reason string) error {
	drainTimeout := orDefault(r.d.DrainTimeout, defaultDrainTimeout)
	r.log.Info("stopping: draining in-flight runs", scheduler.LogKeyReason, reason, "in_flight", r.sched.InFlight(),
		"drain_timeout", drainTimeout)
	_ = r.notify.Stopping()
	r.srv.Draining()
	dctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	go func() {
		select {
		case <-dctx.Done():
		case <-r.d.Abort:
			r.log.Warn("second signal: not waiting for in-flight runs any longer")
			cancel()
		}
	}()
	r.ctl.StopAccepting()
	r.drillsStop()
	derr := r.sched.Drain(dctx, cancelGrace)
	r.drained = true
	if !r.ctl.Wait(dctx) {
		r.log.Warn("control socket: commands still running at the end of the drain; cancelling them")
		r.ctlCancel()
		gctx, gcancel := context.WithTimeout(context.Background(), cancelGrace)
		r.ctl.Wait(gctx)
		gcancel()
	}
	cancel()
	if derr != nil {
		r.audit(eventDaemonStopped, "stopped ("+reason+") before in-flight runs finished; waits resume on the next start")
	} else {
		r.audit(eventDaemonStopped, "stopped ("+reason+") after a clean drain")
	}
	if r.d.BeforeClose != nil {
		r.d.BeforeClose()
	}
	if derr != nil {
		return withExitCode(exitFailure, derr)
	}
	r.log.Info("stopped after a clean drain")
	return nil
}

// audit adds a daemon event to the lineage; a failure is logged, never fatal.
func (r *daemonRun) audit(kind, msg string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := r.st.AddEvent(ctx, store.Event{Kind: kind, Message: msg}); err != nil {
		r.log.Warn("record daemon event", "kind", kind, scheduler.LogKeyErr, err)
	}
}
