package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/gophercloud/gophercloud/v2/openstack/config/clouds"

	"github.com/spf13/cobra"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/cloud/openstack"
	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
	"github.com/imagekeeper/imagekeeper/examples"
	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/store"
)

// demoOptions are the flags of `imagekeeper demo`.
type demoOptions struct {
	*common
	state  string
	listen string
}

// newDemoCommand builds `imagekeeper demo`.
func newDemoCommand(m *Main) *cobra.Command {
	o := &demoOptions{}
	cmd := &cobra.Command{
		Use:   "demo [--state PATH] [--listen 127.0.0.1:9478]",
		Short: "run the daemon against a simulated cloud and narrate what it does",
		Long: `Starts a simulated OpenStack with a dozen servers and runs the daemon on
examples/demo.yaml, narrating what it does. Ctrl-C stops it.`,
		Example: `  imagekeeper demo
  imagekeeper demo --listen 127.0.0.1:0 --state /tmp/demo.db`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runDemo(cmd.Context(), m, o) },
	}
	// The narration is the output; logs only for trouble.
	o.common = newCommon(m, cmd).withLogs("warn")
	f := cmd.Flags()
	f.StringVar(&o.state, "state", "", "lineage database (default: a file in a temp dir, removed on exit)")
	f.StringVar(&o.listen, "listen", "127.0.0.1:9478", "address of /metrics, /healthz and /readyz")
	return cmd
}

// demoServers is the simulated fleet: image-backed web servers (one in ERROR),
// volume-backed database servers with one or two volumes, and servers no policy
// selects.
var demoServers = []simcloud.ServerSpec{
	{Name: "web-1", Tags: []string{"backup=demo", "role=web"}, AZ: "az-1"},
	{Name: "web-2", Tags: []string{"backup=demo", "role=web"}, AZ: "az-1"},
	{Name: "web-3", Tags: []string{"backup=demo", "role=web"}, AZ: "az-2"},
	{Name: "web-4", Tags: []string{"backup=demo", "role=web"}, AZ: "az-2"},
	{Name: "web-broken", Tags: []string{"backup=demo", "role=web"}, AZ: "az-1", Status: "ERROR"},
	{Name: "web-5-opted-out", Tags: []string{"backup=demo", "role=web", "no-backup"}, AZ: "az-1"},
	{Name: "db-1", Tags: []string{"backup=demo", "role=db"}, AZ: "az-1", Volumes: 1},
	{Name: "db-2", Tags: []string{"backup=demo", "role=db"}, AZ: "az-1", Volumes: 2},
	{Name: "db-3", Tags: []string{"backup=demo", "role=db"}, AZ: "az-2", Volumes: 2},
	{Name: "scratch-1", AZ: "az-1"},
	{Name: "scratch-2", AZ: "az-2", Volumes: 1},
	{Name: "bastion", Tags: []string{"role=ops"}, AZ: "az-1"},
}

// runDemo runs `imagekeeper demo`: the daemon against a simulated cloud, told in
// plain words, so that a newcomer sees a whole lifecycle within a minute.
func runDemo(ctx context.Context, m *Main, o *demoOptions) error {
	return demo(ctx, m.Stdout, o.log, o.state, o.listen, m.reloads(), m.Abort)
}

// demo runs the simulator and the daemon until ctx ends; reload and abort are the
// daemon's Reload and Abort.
func demo(ctx context.Context, out io.Writer, log *slog.Logger, statePath, listen string, reload, abort <-chan struct{}) error {
	sim := simcloud.New(simcloud.Options{
		Seed:               1,
		ImageBuildTime:     3 * time.Second,
		SnapshotBuildTime:  2 * time.Second,
		SnapshotDeleteTime: time.Second,
	})
	if err := sim.Start("127.0.0.1:0"); err != nil {
		return fmt.Errorf("start the simulated cloud: %w", err)
	}
	defer sim.Close()
	for _, s := range demoServers {
		sim.AddServer(s)
	}

	dir, err := os.MkdirTemp("", "imagekeeper-demo-")
	if err != nil {
		return fmt.Errorf("temp dir: %w", err)
	}
	defer os.RemoveAll(dir)
	cloudsPath := filepath.Join(dir, "clouds.yaml")
	if err := os.WriteFile(cloudsPath, sim.CloudsYAML("demo"), 0o600); err != nil {
		return fmt.Errorf("write clouds.yaml: %w", err)
	}
	// The db policy's hooks: the script and the file it writes live in dir.
	hooksDir := filepath.Join(dir, "hooks")
	if err := os.MkdirAll(hooksDir, 0o755); err != nil {
		return fmt.Errorf("hooks dir: %w", err)
	}
	if err := os.WriteFile(filepath.Join(hooksDir, "timestamp.sh"), examples.TimestampHook, 0o755); err != nil {
		return fmt.Errorf("write demo hook: %w", err)
	}
	hookLog := filepath.Join(hooksDir, "db-hooks.log")
	configPath := filepath.Join(dir, "imagekeeper.yaml")
	demoPolicy := bytes.ReplaceAll(examples.Demo, []byte(examples.DemoDir+"/hooks/"), []byte(hooksDir+"/"))
	if err := os.WriteFile(configPath, demoPolicy, 0o644); err != nil {
		return fmt.Errorf("write demo policy: %w", err)
	}
	if statePath == "" {
		statePath = filepath.Join(dir, "lineage.db")
	}

	names := map[string]string{}
	for _, sv := range sim.Servers() {
		names[sv.ID] = sv.Name
	}
	w := &narrator{out: out, serverName: func(id string) string { return names[id] }}
	w.say("imagekeeper demo: a simulated OpenStack with %d servers is up at %s", len(demoServers), sim.URL())
	w.say("  image-backed web-1..web-4 (role=web), volume-backed db-1..db-3 (role=db, 1-2 volumes each),")
	w.say("  web-broken in ERROR, web-5-opted-out tagged no-backup, and 3 servers without backup=demo.")
	w.say("policies (examples/demo.yaml): web every 10s keeping the last 3 images, db every 15s keeping the last 2.")
	w.say("restore drills (verify:): every minute for web, every 2 minutes for db, a drill server boots the newest")
	w.say("  good image, is checked ACTIVE with \"login:\" on its console, and is deleted with its volumes.")
	w.say("hooks (image.hooks): db runs examples/hooks/timestamp.sh before each createImage and after the snapshot's")
	w.say("  point in time; it appends to %s, printed when the demo stops.", hookLog)

	d := &Daemon{
		ConfigPath:         configPath,
		StatePath:          statePath,
		Listen:             listen,
		DrainTimeout:       30 * time.Second,
		Logger:             log,
		Reload:             reload,
		Abort:              abort,
		RunnerPollInterval: 500 * time.Millisecond,
		NewCloud: func(ctx context.Context, cfg *policy.Config, log *slog.Logger, observe func(openstack.Request)) (cloud.Cloud, error) {
			return openstack.New(ctx, openstack.Options{
				CloudName:    cfg.Cloud,
				Observe:      observe,
				Logger:       log,
				ParseOptions: []clouds.ParseOption{clouds.WithLocations(cloudsPath)},
			})
		},
		Started: func(addr string, st *store.Store) {
			w.say("daemon running: state %s, metrics at http://%s/metrics. Press Ctrl-C to stop.", statePath, addr)
			w.follow(st)
		},
		BeforeClose: func() { w.stop() },
	}
	err = d.Run(ctx)
	w.stop()
	if err != nil {
		return err
	}
	if b, err := os.ReadFile(hookLog); err == nil {
		w.say("the db policy's hooks ran %d times (%s):", bytes.Count(b, []byte("\n")), hookLog)
		for _, line := range lastLines(string(b), 6) {
			w.say("  %s", line)
		}
	}
	w.say("stopped cleanly.")
	return nil
}

// narrator tells in plain words what the daemon does, from the lineage's audit
// events: they record every state change with its reason, so the story is the one
// `imagekeeper why` would tell, not a second bookkeeping.
type narrator struct {
	out io.Writer
	// serverName names a server id; the audit keeps ids.
	serverName func(id string) string

	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
	seen   int64
	st     *store.Store
}

func (n *narrator) say(format string, args ...any) {
	fmt.Fprintf(n.out, "%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// follow prints new events every half second until stop.
func (n *narrator) follow(st *store.Store) {
	ctx, cancel := context.WithCancel(context.Background())
	n.mu.Lock()
	n.cancel, n.done, n.st = cancel, make(chan struct{}), st
	n.mu.Unlock()
	go func() {
		defer close(n.done)
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			n.poll(ctx)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

// stop prints what is left and stops following; safe to call twice.
func (n *narrator) stop() {
	n.mu.Lock()
	cancel, done, st := n.cancel, n.done, n.st
	n.cancel = nil
	n.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	<-done
	if st != nil {
		ctx, c := context.WithTimeout(context.Background(), 5*time.Second)
		defer c()
		n.poll(ctx)
	}
}

func (n *narrator) poll(ctx context.Context) {
	n.mu.Lock()
	st := n.st
	n.mu.Unlock()
	// Events arrive in id order; the last 1000 are far more than half a second brings.
	evs, err := st.Events(ctx, store.EventFilter{Limit: 1000})
	if err != nil {
		return
	}
	pruned := map[string]bool{}
	var order []string
	for _, e := range evs {
		if e.ID <= n.seen {
			continue
		}
		n.seen = e.ID
		if line := n.narrate(ctx, e); line != "" {
			n.say("%s", line)
		}
		if e.Kind == store.EventImageDeleted && !pruned[e.Policy] {
			pruned[e.Policy] = true
			order = append(order, e.Policy)
		}
	}
	for _, p := range order {
		if line := n.kept(ctx, p); line != "" {
			n.say("%s", line)
		}
	}
}

// kept says what retention left of a policy after it deleted something.
func (n *narrator) kept(ctx context.Context, policy string) string {
	good, err := n.st.Images(ctx, store.ImageFilter{Policy: policy, States: []store.ImageState{store.ImageGood}})
	if err != nil || len(good) == 0 {
		return ""
	}
	per := map[string]int{}
	for _, im := range good {
		per[im.ServerID]++
	}
	same := -1
	for _, k := range per {
		if same == -1 {
			same = k
		} else if k != same {
			same = -2
		}
	}
	if same > 0 {
		return fmt.Sprintf("[%s] retention kept the newest %s of each of its %s (%d in all)",
			policy, plural(same, "good image", "good images"), plural(len(per), "server", "servers"), len(good))
	}
	return fmt.Sprintf("[%s] retention kept %s across %s", policy, plural(len(good), "good image", "good images"),
		plural(len(per), "server", "servers"))
}

// image names the image row of an event: its name and its server's name.
func (n *narrator) image(ctx context.Context, e store.Event) (name, server string) {
	name, server = e.ImageID, n.server(e.ServerID)
	if e.ImageRow != 0 {
		if im, err := n.st.Image(ctx, e.ImageRow); err == nil {
			if im.Name != "" {
				name = im.Name
			}
			if im.ServerName != "" {
				server = im.ServerName
			}
		}
	}
	return name, server
}

// ready says what made an image good. The runner's event message counts volume
// snapshots without pluralising ("1 volume snapshots available") and counts none
// for an image-backed server, so the sentence is rebuilt from the lineage's
// snapshot rows; msg is told as it is if they cannot be read.
func (n *narrator) ready(ctx context.Context, e store.Event, msg string) string {
	if e.ImageRow == 0 || e.ImageID == "" {
		return msg
	}
	snaps, err := n.st.Snapshots(ctx, e.ImageRow)
	if err != nil {
		return msg
	}
	s := "image " + e.ImageID + " active"
	if len(snaps) > 0 {
		s += ", " + plural(len(snaps), "volume snapshot", "volume snapshots") + " available"
	}
	return s
}

func (n *narrator) server(id string) string {
	if n.serverName != nil {
		if name := n.serverName(id); name != "" {
			return name
		}
	}
	return id
}

// narrate turns one audit event into a sentence; "" for events too fine-grained to
// tell a newcomer.
func (n *narrator) narrate(ctx context.Context, e store.Event) string {
	who := e.Policy
	if who == "" {
		who = "daemon"
	}
	at := e.Slot.Local().Format("15:04:05")
	msg := strings.TrimSpace(e.Message)
	switch e.Kind {
	case store.EventSlotStarted:
		return fmt.Sprintf("[%s] slot %s is due: imaging the servers the policy selects", who, at)
	case store.EventSlotFinished:
		return fmt.Sprintf("[%s] slot %s done: %s", who, at, msg)
	case store.EventSlotRecorded:
		return fmt.Sprintf("[%s] slot %s not run: %s", who, at, msg)
	case store.EventServerSkipped:
		return fmt.Sprintf("[%s] skipped server %s: %s", who, n.server(e.ServerID), msg)
	case store.EventImageRequested:
		name, server := n.image(ctx, e)
		return fmt.Sprintf("[%s] asked the cloud for an image of %s (%s)", who, server, name)
	case store.EventImageGood:
		name, server := n.image(ctx, e)
		return fmt.Sprintf("[%s] image %s of %s is ready: %s", who, name, server, n.ready(ctx, e, msg))
	case store.EventImageFailed:
		name, server := n.image(ctx, e)
		return fmt.Sprintf("[%s] image %s of %s failed: %s", who, name, server, msg)
	case store.EventImageAdopted:
		name, server := n.image(ctx, e)
		return fmt.Sprintf("[%s] found image %s of %s by its stamp and adopted it: %s", who, name, server, msg)
	case store.EventImageDeleting:
		name, server := n.image(ctx, e)
		return fmt.Sprintf("[%s] retention: deleting image %s of %s (%s)", who, name, server,
			strings.TrimPrefix(msg, "deleting: "))
	case store.EventImageDeleted:
		name, server := n.image(ctx, e)
		return fmt.Sprintf("[%s] deleted image %s of %s: %s", who, name, server, msg)
	case store.EventSnapshotDeleteStep:
		if !strings.Contains(msg, "-> deleted") {
			return ""
		}
		name, _ := n.image(ctx, e)
		return fmt.Sprintf("[%s] cleaned up volume snapshot %s left by image %s", who, e.SnapshotID, name)
	case store.EventImageProtected:
		name, server := n.image(ctx, e)
		return fmt.Sprintf("[%s] kept image %s of %s: %s", who, name, server, msg)
	case store.EventImageNote:
		// Notes are mostly bookkeeping, but an unknown createImage outcome is the
		// one moment a newcomer must see: the run now waits for the stamped image
		// (up to wait_timeout) instead of asking again.
		if !strings.Contains(msg, "outcome unknown") {
			return ""
		}
		name, server := n.image(ctx, e)
		return fmt.Sprintf("[%s] image %s of %s: %s", who, name, server, msg)
	case store.EventImageCreating, store.EventCreateAttempt, store.EventSnapshotState, store.EventSnapshotAdded,
		store.EventIntentDropped:
		return ""
	case store.EventDrillStarted:
		name, server := n.image(ctx, e)
		return fmt.Sprintf("[%s] restore drill: booting a drill server from %s, the newest good image of %s", who, name, server)
	case store.EventDrillVerified:
		name, server := n.image(ctx, e)
		return fmt.Sprintf("[%s] restore drill: image %s of %s boots (%s); recorded verified_at", who, name, server, drillDetail(msg))
	case store.EventDrillFailed:
		name, server := n.image(ctx, e)
		return fmt.Sprintf("[%s] restore drill: image %s of %s did NOT boot: %s", who, name, server, drillDetail(msg))
	case store.EventDrillCleaned:
		return fmt.Sprintf("[%s] restore drill: deleted the drill server and the volumes it was given", who)
	case eventDaemonStarted, eventDaemonStopped, eventConfigReload:
		return fmt.Sprintf("[daemon] %s: %s", strings.ReplaceAll(e.Kind, "_", " "), msg)
	}
	// Anything else (deferred deletions, refusals, images gone behind our back) is
	// told as the store words it.
	return fmt.Sprintf("[%s] %s: %s", who, strings.ReplaceAll(e.Kind, "_", " "), msg)
}

// drillDetail is the part of a drill event's message after the token.
func drillDetail(msg string) string {
	if i := strings.Index(msg, ": "); i >= 0 {
		msg = msg[i+2:]
	}
	return strings.TrimPrefix(msg, "booted: ")
}

// lastLines returns the last n non-empty lines of s.
func lastLines(s string, n int) []string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}
