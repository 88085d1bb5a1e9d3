package cloud_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/imagekeeper/imagekeeper/cloud"
)

const plain = "hunter2-S3CR3T"

type creds struct {
	User     string
	Password cloud.Secret
	Ptr      *cloud.Secret
}

func leaks(s string) bool {
	return strings.Contains(s, plain) || strings.Contains(s, fmt.Sprintf("%x", plain)) || strings.Contains(s, fmt.Sprintf("%X", plain))
}

func TestSecretNeverPrints(t *testing.T) {
	s := cloud.NewSecret(plain)
	c := creds{User: "admin", Password: s, Ptr: &s}
	verbs := []string{"%p", "%s", "%v", "%+v", "%#v", "%q", "%x", "%X", "%d", "%T", "%10s", "%-20v", "%.3s", "%U", "%c", "%t", "%e", "%08v"}
	for _, verb := range verbs {
		for _, arg := range []any{s, c, &c, []cloud.Secret{s}, map[string]cloud.Secret{"k": s}} {
			if out := fmt.Sprintf(verb, arg); leaks(out) {
				t.Errorf("Sprintf(%q, %T) = %q leaks the secret", verb, arg, out)
			}
		}
	}
	if out := fmt.Sprint(s, c) + fmt.Sprintln(s); leaks(out) {
		t.Errorf("Sprint leaks: %q", out)
	}
	if fmt.Sprint(s) != "<secret>" {
		t.Errorf("Sprint(secret) = %q, want <secret>", fmt.Sprint(s))
	}
	if s.Reveal() != plain {
		t.Error("Reveal does not return the value")
	}
}

func TestSecretHiddenInSlogAndJSON(t *testing.T) {
	s := cloud.NewSecret(plain)
	var buf bytes.Buffer
	for _, h := range []slog.Handler{slog.NewTextHandler(&buf, nil), slog.NewJSONHandler(&buf, nil)} {
		l := slog.New(h)
		l.Info("auth", "password", s, "creds", creds{User: "u", Password: s, Ptr: &s}, slog.Any("any", s), slog.Group("g", "p", s))
	}
	if out := buf.String(); leaks(out) || !strings.Contains(out, "<secret>") {
		t.Errorf("slog output leaks or lacks the placeholder:\n%s", out)
	}
	b, err := json.Marshal(map[string]any{"S": s, "C": creds{User: "u", Password: s, Ptr: &s}, "l": []cloud.Secret{s}, "m": map[cloud.Secret]int{s: 1}})
	if err != nil {
		t.Fatal(err)
	}
	var back struct {
		S string
		C struct{ Password, Ptr string }
	}
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if leaks(string(b)) || back.S != "<secret>" || back.C.Password != "<secret>" || back.C.Ptr != "<secret>" {
		t.Errorf("json.Marshal = %s", b)
	}
}
