package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/scheduler"
)

func TestLogFlags(t *testing.T) {
	tests := []struct {
		args     []string
		wantErr  string
		wantJSON bool
		debugOn  bool
		infoOn   bool
	}{
		{args: nil, infoOn: true},
		{args: []string{"--log-format", "json"}, wantJSON: true, infoOn: true},
		{args: []string{"--log-format=JSON", "--log-level=debug"}, wantJSON: true, debugOn: true, infoOn: true},
		{args: []string{"--log-level", "warn"}},
		{args: []string{"--log-level", "error"}},
		{args: []string{"--log-format", "xml"}, wantErr: `--log-format "xml"`},
		{args: []string{"--log-level", "verbose"}, wantErr: `--log-level "verbose"`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
			fs.SetOutput(io.Discard)
			lf := addLogFlags(fs)
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			log, err := lf.logger(&buf)
			if tt.wantErr != "" {
				var ee *exitError
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.As(err, &ee) || ee.code != exitUsage {
					t.Fatalf("err = %v, want a usage error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			log.Debug("dbg")
			log.Info("inf", scheduler.LogKeyPolicy, "web")
			out := buf.String()
			if got := strings.Contains(out, "dbg"); got != tt.debugOn {
				t.Errorf("debug line present = %v, want %v:\n%s", got, tt.debugOn, out)
			}
			if got := strings.Contains(out, "inf"); got != tt.infoOn {
				t.Errorf("info line present = %v, want %v:\n%s", got, tt.infoOn, out)
			}
			if !tt.infoOn {
				return
			}
			last := lastLine(out)
			var rec map[string]any
			isJSON := json.Unmarshal([]byte(last), &rec) == nil
			if isJSON != tt.wantJSON {
				t.Fatalf("JSON = %v, want %v: %q", isJSON, tt.wantJSON, last)
			}
			if tt.wantJSON && rec[scheduler.LogKeyPolicy] != "web" {
				t.Errorf("policy = %v, want web", rec[scheduler.LogKeyPolicy])
			}
			if !tt.wantJSON && !strings.Contains(last, "policy=web") {
				t.Errorf("text line lacks policy=web: %q", last)
			}
		})
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1]
}

func TestLoggerRedactsCredentials(t *testing.T) {
	const real = "hunter2-Zq9"
	for _, format := range []string{logFormatText, logFormatJSON} {
		t.Run(format, func(t *testing.T) {
			var buf bytes.Buffer
			log, err := newLogger(&buf, format, "debug")
			if err != nil {
				t.Fatal(err)
			}
			// A plain string under a credential key (a mistake the redaction catches), a
			// cloud.Secret under a neutral key, and both inside a group.
			log.Info("auth", "password", real, "value", cloud.NewSecret(real),
				slog.Group("auth", "application_credential_secret", real, "token", []byte(real)))
			log.Debug("any", "Os_Password", real, "x", cloud.NewSecret(real))
			out := buf.String()
			if strings.Contains(out, real) {
				t.Fatalf("secret leaked in %s log:\n%s", format, out)
			}
			if n := strings.Count(out, redactedValue); n < 6 {
				t.Errorf("want at least 6 %s markers, got %d:\n%s", redactedValue, n, out)
			}
		})
	}
	t.Run("neutral keys untouched", func(t *testing.T) {
		var buf bytes.Buffer
		log, _ := newLogger(&buf, logFormatText, "info")
		log.Info("x", scheduler.LogKeyImageID, "img-1", scheduler.LogKeyServerID, "srv-1")
		if !strings.Contains(buf.String(), "image_id=img-1") || !strings.Contains(buf.String(), "server_id=srv-1") {
			t.Errorf("ids redacted or missing: %s", buf.String())
		}
	})
}
