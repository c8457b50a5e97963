// Package secret checks that files holding secrets are private, as ssh and libpq do: a key
// or password that any local user can read is no longer a secret.
package secret

import (
	"fmt"
	"os"
	"runtime"

	"gopkg.in/yaml.v3"
)

// CheckPrivate returns an error when the file at path can be read or written by its group
// or by others, saying the chmod that fixes it.
func CheckPrivate(path, what string) error {
	if runtime.GOOS == "windows" {
		return nil
	}
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%s %s is accessible to other users (mode %04o): run `chmod 600 %s`", what, path, perm, path)
	}
	return nil
}

// CheckServiceFile is CheckPrivate for files a service reads that an administrator may
// share with it through a group, as PostgreSQL allows for its ssl_key_file: a file owned by
// root that its group may read but not write (0640) passes with a warning for the caller to
// log; anything else that the group or others can reach is refused, saying the chmod.
func CheckServiceFile(path, what string) (warning string, err error) {
	if runtime.GOOS == "windows" {
		return "", nil
	}
	st, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	perm := st.Mode().Perm()
	switch {
	case perm&0o077 == 0:
		return "", nil
	case perm&0o077 == 0o040 && ownedByRoot(st):
		return fmt.Sprintf("%s %s is readable by its group (mode %04o, owned by root): every member of the group can read the secrets in it; run `chmod 600 %s` (and chown it to the user that runs pgharbor) to keep them to one user", what, path, perm, path), nil
	}
	return "", fmt.Errorf("%s %s is accessible to other users (mode %04o): run `chmod 600 %s` (a root-owned file may be 0640 to share it with a group)", what, path, perm, path)
}

// secretKeys are configuration keys whose values are secrets, wherever they appear.
var secretKeys = map[string]bool{
	"passphrase": true, "secret_access_key": true, "session_token": true, "password": true,
	"health_check_password": true, "replication_password": true, "server_password": true,
}

// IsSecretKey reports whether a configuration key (at any depth) holds a secret.
func IsSecretKey(key string) bool { return secretKeys[key] }

// HoldsSecrets reports whether a YAML document sets any secret key to a value, at any
// depth, and names one of them. The document is read as the configuration decoder reads
// it, so a secret reached through an anchor, an alias or a merge key (<<) counts.
func HoldsSecrets(doc []byte) (bool, string) {
	var root any
	if yaml.Unmarshal(doc, &root) != nil {
		return false, ""
	}
	key := find(root, 0)
	return key != "", key
}

// maxDepth bounds the walk: aliases can make a small document a deep (not infinite) tree.
const maxDepth = 100

func find(v any, depth int) string {
	if depth > maxDepth {
		return ""
	}
	check := func(k string, x any) string {
		if secretKeys[k] {
			switch x := x.(type) {
			case nil:
			case string:
				if x != "" {
					return k
				}
			case map[string]any, map[any]any, []any:
			default:
				return k // a number or a boolean is still a password
			}
		}
		return find(x, depth+1)
	}
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			if found := check(k, x); found != "" {
				return found
			}
		}
	case map[any]any:
		for k, x := range v {
			ks, _ := k.(string)
			if found := check(ks, x); found != "" {
				return found
			}
		}
	case []any:
		for _, x := range v {
			if found := find(x, depth+1); found != "" {
				return found
			}
		}
	}
	return ""
}
