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

// secretKeys are configuration keys whose values are secrets, wherever they appear.
var secretKeys = map[string]bool{
	"passphrase": true, "secret_access_key": true, "session_token": true, "password": true,
	"health_check_password": true, "replication_password": true, "auth_password": true,
}

// HoldsSecrets reports whether a YAML document sets any secret key to a non-empty value,
// at any depth, and names the first one.
func HoldsSecrets(doc []byte) (bool, string) {
	var root yaml.Node
	if yaml.Unmarshal(doc, &root) != nil {
		return false, ""
	}
	var walk func(n *yaml.Node) string
	walk = func(n *yaml.Node) string {
		if n.Kind == yaml.MappingNode {
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				if secretKeys[k.Value] && v.Kind == yaml.ScalarNode && v.Value != "" {
					return k.Value
				}
				if found := walk(v); found != "" {
					return found
				}
			}
			return ""
		}
		for _, c := range n.Content {
			if found := walk(c); found != "" {
				return found
			}
		}
		return ""
	}
	key := walk(&root)
	return key != "", key
}
