package render

import (
	"fmt"

	"sigs.k8s.io/yaml"
)

// marshalYAML renders v as YAML the way Kubernetes tools do: through its JSON form, keys sorted.
func marshalYAML(v any) ([]byte, error) {
	b, err := yaml.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("render %T: %w", v, err)
	}
	return b, nil
}

// yamlFile starts a YAML file with the generated-file comment.
func yamlFile(docs ...[]byte) []byte {
	out := []byte("# " + header + "\n")
	for i, d := range docs {
		if i > 0 {
			out = append(out, "---\n"...)
		}
		out = append(out, d...)
	}
	return out
}
