package secret

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckPrivateRefusesFilesOthersCanRead(t *testing.T) {
	p := filepath.Join(t.TempDir(), "identity.txt")
	if err := os.WriteFile(p, []byte("AGE-SECRET-KEY-1…\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := CheckPrivate(p, "identity file")
	if err == nil || !strings.Contains(err.Error(), "chmod 600 "+p) {
		t.Fatalf("a 0644 identity file: %v, want an error saying the chmod", err)
	}
	os.Chmod(p, 0o600)
	if err := CheckPrivate(p, "identity file"); err != nil {
		t.Fatalf("a 0600 identity file: %v", err)
	}
}

func TestHoldsSecretsFindsThemAtAnyDepth(t *testing.T) {
	for doc, want := range map[string]string{
		"repo: {url: file:///x}\nencryption: {mode: age, recipients: [age1x]}\n": "",
		"encryption: {mode: passphrase, passphrase: hunter2}\n":                  "passphrase",
		"s3: {secret_access_key: abc}\n":                                         "secret_access_key",
		"clusters:\n- name: a\n  s3: {secret_access_key: abc}\n":                 "secret_access_key",
		"pool: {cluster: {health_check_password: ''}}\n":                         "",
		"pool: {server_password: x}\n":                                           "server_password",
		"encryption: {passphrase: 1234}\n":                                       "passphrase",
		"encryption: {passphrase: null}\n":                                       "",
		// found by FuzzConfig: a value reached through an alias or a merge key
		"k: &k s3cr3t\ns3: {secret_access_key: *k}\n":       "secret_access_key",
		"base: &b {passphrase: x}\nencryption:\n  <<: *b\n": "passphrase",
	} {
		ok, key := HoldsSecrets([]byte(doc))
		if key != want || ok != (want != "") {
			t.Errorf("HoldsSecrets(%q) = %v %q, want %q", doc, ok, key, want)
		}
	}
}

func TestCheckServiceFileAllowsOnlyARootOwnedGroupShare(t *testing.T) {
	p := filepath.Join(t.TempDir(), "userlist.txt")
	if err := os.WriteFile(p, []byte(`"u" "pw"`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if w, err := CheckServiceFile(p, "auth_file"); w != "" || err != nil {
		t.Fatalf("0600: warning %q, error %v", w, err)
	}
	for _, mode := range []os.FileMode{0o644, 0o604, 0o660, 0o620} {
		os.Chmod(p, mode)
		if _, err := CheckServiceFile(p, "auth_file"); err == nil || !strings.Contains(err.Error(), "chmod 600 "+p) {
			t.Errorf("mode %04o: %v, want a refusal saying the chmod", mode, err)
		}
	}
	os.Chmod(p, 0o640)
	w, err := CheckServiceFile(p, "auth_file")
	if os.Geteuid() == 0 {
		// the file is root's: shared with a group on purpose, as PostgreSQL allows for its key
		if err != nil || !strings.Contains(w, "chmod 600 "+p) {
			t.Fatalf("root-owned 0640: warning %q, error %v; want a warning saying the chmod", w, err)
		}
		if err := os.Chown(p, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		w, err = CheckServiceFile(p, "auth_file")
	}
	if err == nil {
		t.Fatalf("0640 not owned by root: accepted (warning %q)", w)
	}
}
