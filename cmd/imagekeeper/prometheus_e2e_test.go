package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"

	"github.com/imagekeeper/imagekeeper/scheduler"
)

// The files under test, relative to this package.
var (
	dashboardPath  = filepath.Join("..", "..", "examples", "grafana", "imagekeeper.json")
	alertsPath     = filepath.Join("..", "..", "examples", "prometheus", "alerts.yml")
	alertsTestPath = filepath.Join("..", "..", "examples", "prometheus", "alerts_test.yml")
)

// grafanaDashboard is the part of the dashboard model the tests read.
type grafanaDashboard struct {
	SchemaVersion int    `json:"schemaVersion"`
	UID           string `json:"uid"`
	Title         string `json:"title"`
	Templating    struct {
		List []struct {
			Type       string          `json:"type"`
			Name       string          `json:"name"`
			Query      json.RawMessage `json:"query"`
			Definition string          `json:"definition"`
			Datasource *grafanaDS      `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
	Panels []grafanaPanel `json:"panels"`
}

type grafanaDS struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type grafanaPanel struct {
	ID         int                      `json:"id"`
	Type       string                   `json:"type"`
	Title      string                   `json:"title"`
	Datasource *grafanaDS               `json:"datasource"`
	GridPos    struct{ H, W, X, Y int } `json:"gridPos"`
	Targets    []struct {
		Expr       string     `json:"expr"`
		RefID      string     `json:"refId"`
		Datasource *grafanaDS `json:"datasource"`
	} `json:"targets"`
	Panels []grafanaPanel `json:"panels"` // a collapsed row's panels
}

func loadDashboard(t *testing.T) grafanaDashboard {
	t.Helper()
	data, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var d grafanaDashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	return d
}

// allPanels flattens rows.
func (d grafanaDashboard) allPanels() []grafanaPanel {
	var out []grafanaPanel
	var walk func(ps []grafanaPanel)
	walk = func(ps []grafanaPanel) {
		for _, p := range ps {
			out = append(out, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

// dashboardQuery is one PromQL expression of the dashboard.
type dashboardQuery struct {
	panel, refID, expr string
}

func (d grafanaDashboard) queries() []dashboardQuery {
	var qs []dashboardQuery
	for _, p := range d.allPanels() {
		for _, tg := range p.Targets {
			qs = append(qs, dashboardQuery{panel: p.Title, refID: tg.RefID, expr: tg.Expr})
		}
	}
	return qs
}

// grafanaVars replaces Grafana's variables the way Grafana would for a dashboard
// showing the last few minutes at a 1 s scrape interval; policy is the regex the
// policy variable expands to.
func grafanaVars(expr, policy string) string {
	return strings.NewReplacer(
		"${policy:regex}", policy, "${policy}", policy, "$policy", policy,
		"${job}", ".*", "$job", ".*", "${instance}", ".*", "$instance", ".*",
		"${__rate_interval}", "1m", "$__rate_interval", "1m",
		"${__interval}", "15s", "$__interval", "15s",
		"${__range}", "10m", "$__range", "10m",
	).Replace(expr)
}

// metricNameRE finds imagekeeper metric names in PromQL.
var metricNameRE = regexp.MustCompile(`\bimagekeeper_[a-z_]+\b`)

// knownFamilies returns the metric families Metrics registers, with the series
// names a histogram adds.
func knownFamilies(t *testing.T) map[string]bool {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	m := scheduler.NewMetrics(reg, scheduler.BuildInfo{Version: "test"})
	m.InitPolicy("p")
	m.ObserveCloudRequest("compute", "list_servers", 200, time.Millisecond)
	m.SetNextSlot("p", time.Now())
	m.SetLastSuccess("p", time.Now())
	m.ServersSelected("p", 1)
	m.InitDrills("p", time.Minute)
	m.DrillResult("p", "ok", time.Second, time.Now())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	for _, mf := range mfs {
		known[mf.GetName()] = true
		if mf.GetType().String() == "HISTOGRAM" {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				known[mf.GetName()+s] = true
			}
		}
	}
	// Series that exist only after Refresh saw a store.
	for _, n := range []string{"imagekeeper_newest_good_image_age_seconds", "imagekeeper_schedule_period_seconds",
		"imagekeeper_selection_empty_since_timestamp_seconds"} {
		known[n] = true
	}
	return known
}

// TestGrafanaDashboardShape checks the dashboard as Grafana would load it: current
// schema, the datasource and policy variables, every panel on the datasource
// variable, unique ids, a sane grid, and only metric names imagekeeper exports.
func TestGrafanaDashboardShape(t *testing.T) {
	d := loadDashboard(t)
	if d.SchemaVersion < 39 {
		t.Errorf("schemaVersion = %d, want >= 39", d.SchemaVersion)
	}
	if d.UID == "" || d.Title == "" {
		t.Errorf("uid %q, title %q: both are required for provisioning", d.UID, d.Title)
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
		wantDef := map[string]string{
			"policy":   `label_values(imagekeeper_slots_total{job=~"$job",instance=~"$instance"}, policy)`,
			"job":      `label_values(imagekeeper_build_info, job)`,
			"instance": `label_values(imagekeeper_build_info{job=~"$job"}, instance)`,
		}[v.Name]
		if wantDef != "" {
			// The query is JSON: its quotes are escaped there.
			quoted, _ := json.Marshal(wantDef)
			if v.Definition != wantDef || !bytes.Contains(v.Query, quoted[1:len(quoted)-1]) {
				t.Errorf("%s variable: definition %q, query %s; want %s", v.Name, v.Definition, v.Query, wantDef)
			}
			if v.Datasource == nil || v.Datasource.UID != "${datasource}" {
				t.Errorf("policy variable datasource = %+v, want ${datasource}", v.Datasource)
			}
		}
	}
	if vars["datasource"] != "datasource" || vars["policy"] != "query" || vars["job"] != "query" || vars["instance"] != "query" {
		t.Errorf("variables = %v, want datasource (datasource), job, instance and policy (query)", vars)
	}
	// Several daemons (one per region) must never be mixed: every series a panel
	// reads is scoped to the job and instance variables.
	scoped := regexp.MustCompile(`\bimagekeeper_[a-z0-9_]+\{job=~"\$job",instance=~"\$instance"[,}]`)
	for _, q := range d.queries() {
		if n, m := len(metricNameRE.FindAllString(q.expr, -1)), len(scoped.FindAllString(q.expr, -1)); n != m {
			t.Errorf("panel %q %s: %d of %d series scoped to $job and $instance: %s", q.panel, q.refID, m, n, q.expr)
		}
		// A daily policy makes one image a day: a rate over $__rate_interval is an
		// empty panel with a spike; the image-creation panels count over the range.
		if (q.panel == "Image creation duration" || q.panel == "Images created") &&
			(strings.Contains(q.expr, "$__rate_interval") || !strings.Contains(q.expr, "[$__range]")) {
			t.Errorf("panel %q %s: image creation over $__rate_interval, want [$__range]: %s", q.panel, q.refID, q.expr)
		}
	}

	known := knownFamilies(t)
	ids := map[int]string{}
	type cell struct{ x, y int }
	taken := map[cell]string{}
	exprs := 0
	for _, p := range d.allPanels() {
		if prev, dup := ids[p.ID]; dup {
			t.Errorf("panel id %d used by %q and %q", p.ID, prev, p.Title)
		}
		ids[p.ID] = p.Title
		if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X < 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: gridPos %+v outside the 24-column grid", p.Title, p.GridPos)
		}
		for x := p.GridPos.X; x < p.GridPos.X+p.GridPos.W; x++ {
			for y := p.GridPos.Y; y < p.GridPos.Y+p.GridPos.H; y++ {
				if other, ok := taken[cell{x, y}]; ok {
					t.Fatalf("panels %q and %q overlap at %d,%d", other, p.Title, x, y)
				}
				taken[cell{x, y}] = p.Title
			}
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource %+v, want the ${datasource} variable", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			exprs++
			if tg.Expr == "" || tg.RefID == "" || refs[tg.RefID] {
				t.Errorf("panel %q: target %q with refId %q (empty or duplicate)", p.Title, tg.Expr, tg.RefID)
			}
			refs[tg.RefID] = true
			for _, name := range metricNameRE.FindAllString(tg.Expr, -1) {
				if !known[name] {
					t.Errorf("panel %q: %s is not a metric imagekeeper exports", p.Title, name)
				}
			}
		}
	}
	// The panels, by the metric each must show.
	all := ""
	for _, q := range d.queries() {
		all += q.expr + "\n"
	}
	for _, need := range []string{
		"imagekeeper_slots_total", "histogram_quantile(0.5, sum by (le, policy) (increase(imagekeeper_image_create_duration_seconds_bucket",
		"histogram_quantile(0.95, sum by (le, policy) (increase(imagekeeper_image_create_duration_seconds_bucket",
		"imagekeeper_newest_good_image_age_seconds", "imagekeeper_servers_without_good_image",
		"imagekeeper_images_deleted_total", "imagekeeper_snapshots_deleted_total", "imagekeeper_leftover_snapshots",
		"rate(imagekeeper_cloud_requests_total", `code=~"5..|429|error"`, "imagekeeper_config_last_reload_successful",
		"imagekeeper_cloud_up", "imagekeeper_selection_empty_since_timestamp_seconds", `outcome="empty"`,
		"imagekeeper_foreign_stamped_images",
	} {
		if !strings.Contains(all, need) {
			t.Errorf("no dashboard query contains %q", need)
		}
	}
	if exprs < 10 {
		t.Errorf("only %d queries", exprs)
	}
}

// TestAlertRulesUseExportedMetrics catches a renamed metric that would silently
// turn an alert into one that never fires.
func TestAlertRulesUseExportedMetrics(t *testing.T) {
	data, err := os.ReadFile(alertsPath)
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(data, &rules); err != nil {
		t.Fatal(err)
	}
	known := knownFamilies(t)
	alerts := map[string]bool{}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			alerts[r.Alert] = true
			for _, name := range metricNameRE.FindAllString(r.Expr, -1) {
				if !known[name] {
					t.Errorf("alert %s: %s is not a metric imagekeeper exports", r.Alert, name)
				}
			}
		}
	}
	for _, want := range []string{"ImagekeeperRecoveryPointStale", "ImagekeeperSlotsFailing", "ImagekeeperServersWithoutGoodImage",
		"ImagekeeperLeftoverSnapshotsGrowing", "ImagekeeperCloudErrors", "ImagekeeperConfigReloadFailed",
		"ImagekeeperAbsent", "ImagekeeperDown", "ImagekeeperCloudDown", "ImagekeeperPolicySelectsNothing",
		"ImagekeeperOrphanedImages"} {
		if !alerts[want] {
			t.Errorf("alert %s is missing", want)
		}
	}
}

// TestPromtoolRules runs promtool's own checks on the alert rules and their unit
// tests (.ci/run runs them too; here they also run under plain go test).
func TestPromtoolRules(t *testing.T) {
	promtool := requirePeer(t, "promtool", "prometheus")
	for _, args := range [][]string{
		{"check", "rules", filepath.Base(alertsPath)},
		{"test", "rules", filepath.Base(alertsTestPath)},
	} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = filepath.Dir(alertsPath)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// e2eFreeAddr returns a loopback address nobody listens on right now.
func e2eFreeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// e2eBuildBinary builds imagekeeper into dir.
func e2eBuildBinary(t *testing.T, dir string) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("go tool not found: %v", err)
	}
	bin := filepath.Join(dir, "imagekeeper")
	cmd := exec.Command(goTool, "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// e2eProcess is a started program whose output is kept for the failure message.
type e2eProcess struct {
	name string
	cmd  *exec.Cmd
	out  syncBuffer
	done chan struct{}
}

func e2eStart(t *testing.T, name string, args ...string) *e2eProcess {
	t.Helper()
	p := &e2eProcess{name: filepath.Base(name), done: make(chan struct{})}
	p.cmd = exec.Command(name, args...)
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(20 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("--- %s output (last 4 KiB):\n%s", p.name, e2eTail(p.out.String(), 4096))
		}
	})
	return p
}

func e2eTail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// e2eWaitFor polls f until it returns nil or the deadline passes, and returns the
// last error.
func e2eWaitFor(ctx context.Context, every time.Duration, f func() error) error {
	for {
		err := f()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(every):
		}
	}
}

func e2eGet(ctx context.Context, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	// The text format: what promtool check metrics reads.
	req.Header.Set("Accept", "text/plain")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return body, fmt.Errorf("GET %s: %s: %s", u, resp.Status, e2eTail(string(body), 300))
	}
	return body, nil
}

// promResult is Prometheus's /api/v1/query answer.
type promResult struct {
	Status    string `json:"status"`
	ErrorType string `json:"errorType"`
	Error     string `json:"error"`
	Data      struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	} `json:"data"`
}

// promQuery evaluates expr now and returns how many samples it gave and how many
// of them are finite numbers.
func promQuery(ctx context.Context, base, expr string) (samples, finite int, err error) {
	body, err := e2eGet(ctx, base+"/api/v1/query?query="+url.QueryEscape(expr))
	if err != nil {
		return 0, 0, err
	}
	var r promResult
	if err := json.Unmarshal(body, &r); err != nil {
		return 0, 0, fmt.Errorf("decode %s: %w", e2eTail(string(body), 200), err)
	}
	if r.Status != "success" {
		return 0, 0, fmt.Errorf("%s: %s", r.ErrorType, r.Error)
	}
	var values [][2]any
	switch r.Data.ResultType {
	case "vector":
		var vec []struct {
			Value [2]any `json:"value"`
		}
		if err := json.Unmarshal(r.Data.Result, &vec); err != nil {
			return 0, 0, err
		}
		for _, v := range vec {
			values = append(values, v.Value)
		}
	case "scalar":
		var v [2]any
		if err := json.Unmarshal(r.Data.Result, &v); err != nil {
			return 0, 0, err
		}
		values = append(values, v)
	default:
		return 0, 0, fmt.Errorf("result type %s", r.Data.ResultType)
	}
	for _, v := range values {
		s, _ := v[1].(string)
		f, err := strconv.ParseFloat(s, 64)
		if err == nil && !math.IsNaN(f) && !math.IsInf(f, 0) {
			finite++
		}
	}
	return len(values), finite, nil
}

// TestPrometheusEndToEnd runs the real thing: the imagekeeper binary's demo (the
// daemon on a simulated cloud) scraped every second by a real Prometheus that also
// loads the alert rules. It checks a live scrape with promtool check metrics, that
// the rules load and evaluate without error, and that every PromQL expression of
// the Grafana dashboard returns data, for all policies and for one.
func TestPrometheusEndToEnd(t *testing.T) {
	promBin := requirePeer(t, "prometheus", "prometheus")
	promtool := requirePeer(t, "promtool", "prometheus")
	if testing.Short() {
		t.Skip("end-to-end: builds the binary and runs a minute or two")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	dir := t.TempDir()
	bin := e2eBuildBinary(t, dir)

	ikAddr := e2eFreeAddr(t)
	ik := e2eStart(t, bin, "demo", "--listen", ikAddr, "--state", filepath.Join(dir, "lineage.db"))
	metricsURL := "http://" + ikAddr + "/metrics"
	err := e2eWaitFor(ctx, 200*time.Millisecond, func() error {
		select {
		case <-ik.done:
			return fmt.Errorf("imagekeeper demo exited")
		default:
		}
		_, err := e2eGet(ctx, metricsURL)
		return err
	})
	if err != nil {
		t.Fatalf("imagekeeper demo never served %s: %v", metricsURL, err)
	}

	alertsAbs, err := filepath.Abs(alertsPath)
	if err != nil {
		t.Fatal(err)
	}
	promAddr := e2eFreeAddr(t)
	promCfg := filepath.Join(dir, "prometheus.yml")
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - %q
scrape_configs:
  - job_name: imagekeeper
    static_configs:
      - targets: [%q]
`, alertsAbs, ikAddr)
	if err := os.WriteFile(promCfg, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	e2eStart(t, promBin, "--config.file="+promCfg, "--storage.tsdb.path="+filepath.Join(dir, "tsdb"),
		"--web.listen-address="+promAddr, "--log.level=warn")
	promURL := "http://" + promAddr

	if err := e2eWaitFor(ctx, 500*time.Millisecond, func() error {
		_, finite, err := promQuery(ctx, promURL, `up{job="imagekeeper"} == 1`)
		if err == nil && finite == 0 {
			err = fmt.Errorf("target not up yet")
		}
		return err
	}); err != nil {
		t.Fatalf("prometheus never scraped imagekeeper: %v", err)
	}

	// The policy variable, as Grafana asks for it.
	var policies []string
	if err := e2eWaitFor(ctx, time.Second, func() error {
		body, err := e2eGet(ctx, promURL+"/api/v1/label/policy/values?match[]=imagekeeper_slots_total")
		if err != nil {
			return err
		}
		var r struct {
			Data []string `json:"data"`
		}
		if err := json.Unmarshal(body, &r); err != nil {
			return err
		}
		if len(r.Data) == 0 {
			return fmt.Errorf("label_values(imagekeeper_slots_total, policy) is empty")
		}
		policies = r.Data
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	sort.Strings(policies)

	dash := loadDashboard(t)
	type check struct {
		name, expr string
	}
	var checks []check
	for _, q := range dash.queries() {
		checks = append(checks,
			check{fmt.Sprintf("%s/%s (policy=All)", q.panel, q.refID), grafanaVars(q.expr, ".*")},
			check{fmt.Sprintf("%s/%s (policy=%s)", q.panel, q.refID, policies[0]), grafanaVars(q.expr, policies[0])})
	}
	// Every expression must give at least one finite sample. Some need time: a
	// rate over a minute needs two scrapes, the worst recovery point needs a good
	// image and a refresh of the store-derived gauges.
	pending := map[string]string{}
	err = e2eWaitFor(ctx, 2*time.Second, func() error {
		clear(pending)
		for _, c := range checks {
			n, finite, err := promQuery(ctx, promURL, c.expr)
			switch {
			case err != nil:
				pending[c.name] = fmt.Sprintf("%s: %v", c.expr, err)
			case finite == 0:
				pending[c.name] = fmt.Sprintf("%s: %d samples, none finite", c.expr, n)
			}
		}
		if len(pending) > 0 {
			return fmt.Errorf("%d of %d expressions without data", len(pending), len(checks))
		}
		return nil
	})
	if err != nil {
		names := make([]string, 0, len(pending))
		for n := range pending {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			t.Errorf("dashboard query %s returned no data: %s", n, pending[n])
		}
		t.FailNow()
	}
	t.Logf("all %d dashboard expressions returned data (policies %v)", len(checks), policies)

	t.Run("promtool check metrics", func(t *testing.T) {
		// By now slots have run, images were made and the store-derived gauges
		// refreshed: the scrape holds every kind of series.
		scrape, err := e2eGet(ctx, metricsURL)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = bytes.NewReader(scrape)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool check metrics: %v\n%s", err, out)
		}
		for _, name := range []string{"imagekeeper_build_info", "imagekeeper_slots_total", "imagekeeper_config_last_reload_successful"} {
			if !bytes.Contains(scrape, []byte("\n"+name)) {
				t.Errorf("live scrape lacks %s", name)
			}
		}
	})

	t.Run("alert rules load and evaluate", func(t *testing.T) {
		body, err := e2eGet(ctx, promURL+"/api/v1/rules")
		if err != nil {
			t.Fatal(err)
		}
		var r struct {
			Data struct {
				Groups []struct {
					Rules []struct {
						Name      string `json:"name"`
						Health    string `json:"health"`
						LastError string `json:"lastError"`
					} `json:"rules"`
				} `json:"groups"`
			} `json:"data"`
		}
		if err := json.Unmarshal(body, &r); err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, g := range r.Data.Groups {
			for _, rule := range g.Rules {
				n++
				if rule.Health == "err" || rule.LastError != "" {
					t.Errorf("rule %s: health %s: %s", rule.Name, rule.Health, rule.LastError)
				}
			}
		}
		if n == 0 {
			t.Error("prometheus loaded no alert rules")
		}
	})
}
