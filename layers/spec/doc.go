// Package spec parses, validates and canonicalizes NodeImage specs (apiVersion imgctl/v1alpha1),
// the YAML documents that list a node image's Kubernetes version, ordered layers, kernel cmdline and targets.
package spec
