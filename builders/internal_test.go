package builders

// ReadableVersion is readableVersion, for the external tests.
var ReadableVersion = readableVersion
