// Package deb reads Debian binary packages as streams and resolves packages from signed APT repositories.
// It never runs maintainer scripts: a package's data.tar is exposed for use as an image layer.
package deb
