package main

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/pgharbor/pgharbor/failover"
	"github.com/pgharbor/pgharbor/internal/secret"
	"github.com/pgharbor/pgharbor/pool"
)

// FuzzConfig parses configuration files (seeds: docs/pgharbor.example.yaml and the
// multi-cluster file of the server tests) and checks what the loader promises: no panic; a
// file that sets a secret, however YAML spells it (anchors, aliases, merge keys, tags), is
// seen as holding one, so that LoadConfig checks its permissions; and expanding a clusters:
// list never changes the top level it starts from.
func FuzzConfig(f *testing.F) {
	if b, err := os.ReadFile("../../docs/pgharbor.example.yaml"); err == nil {
		f.Add(b)
	}
	f.Add([]byte("repo: {url: file:///r, cluster: a}\nwal: {spool_dir: /s}\nclusters:\n  - name: a\n  - name: b\n    repo: {cluster: b}\n    pool: {listen: x}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg := &Config{raw: map[string]yaml.Node{}}
		if parseConfig(data, cfg) != nil {
			return
		}
		before := cloneConfig(cfg)
		before.raw = cfg.raw
		if _, err := cfg.Clusters(); err == nil && !reflect.DeepEqual(before, cfg) {
			t.Fatalf("Clusters changed the top level:\n%+v\n%+v", before, cfg)
		}
		// What the program will use, found through the structs it decodes into: if any of it
		// is a secret, HoldsSecrets must have said so.
		used := []any{cfg}
		var pc pool.Config
		if cfg.Section("pool", &pc) == nil {
			used = append(used, &pc)
		}
		var fc failover.Config
		if cfg.Section("failover", &fc) == nil {
			used = append(used, &fc)
		}
		if list, err := cfg.Clusters(); err == nil {
			for _, cc := range list {
				used = append(used, cc.Cfg)
				var pc pool.Config
				if cc.Cfg.Section("pool", &pc) == nil {
					used = append(used, &pc)
				}
			}
		}
		for _, v := range used {
			if key := setSecret(reflect.ValueOf(v).Elem()); key != "" {
				if ok, _ := secret.HoldsSecrets(data); !ok {
					t.Fatalf("the file sets %s, but HoldsSecrets says it holds no secret:\n%s", key, data)
				}
			}
		}
	})
}

// setSecret returns the yaml name of the first secret field of v (a struct, walked
// through nested structs, pointers, maps and slices) that is set.
func setSecret(v reflect.Value) string {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			return ""
		}
		return setSecret(v.Elem())
	case reflect.Map:
		for _, k := range v.MapKeys() {
			if s := setSecret(v.MapIndex(k)); s != "" {
				return s
			}
		}
	case reflect.Slice:
		for i := range v.Len() {
			if s := setSecret(v.Index(i)); s != "" {
				return s
			}
		}
	case reflect.Struct:
		for i := range v.NumField() {
			f := v.Type().Field(i)
			if !f.IsExported() {
				continue
			}
			if name := yamlName(f); secret.IsSecretKey(name) && !v.Field(i).IsZero() {
				return name
			}
			if s := setSecret(v.Field(i)); s != "" {
				return s
			}
		}
	}
	return ""
}

// TestEverySecretSettingIsKnownToTheSecretCheck: a setting whose name says it holds a
// password, key or token must make LoadConfig check the file's permissions.
func TestEverySecretSettingIsKnownToTheSecretCheck(t *testing.T) {
	looksSecret := regexp.MustCompile(`password|passphrase|secret|token`)
	var walk func(t reflect.Type, path string)
	seen := map[reflect.Type]bool{}
	walk = func(ty reflect.Type, path string) {
		for ty.Kind() == reflect.Pointer || ty.Kind() == reflect.Slice || ty.Kind() == reflect.Map {
			ty = ty.Elem()
		}
		if ty.Kind() != reflect.Struct || seen[ty] {
			return
		}
		seen[ty] = true
		for i := range ty.NumField() {
			f := ty.Field(i)
			if !f.IsExported() {
				continue
			}
			name := yamlName(f)
			// A *_file setting names the file that holds the secret; that file is checked
			// where it is read.
			if looksSecret.MatchString(name) && !strings.HasSuffix(name, "_file") && !secret.IsSecretKey(name) && f.Type.Kind() == reflect.String {
				t.Errorf("%s.%s holds a secret, but a config file that sets it is not checked for permissions", path, name)
			}
			walk(f.Type, path+"."+name)
		}
	}
	walk(reflect.TypeOf(Config{}), "")
	walk(reflect.TypeOf(pool.Config{}), "pool")
	walk(reflect.TypeOf(failover.Config{}), "failover")
}
