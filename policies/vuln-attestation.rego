# A vulnerability gate on a signed scan (cosign attest --type vuln, a Trivy JSON report as the scanner
# result), in Rego v1. The authority's `attestations: [{type: vuln}]` makes sure a signed scan of this
# digest exists; this module requires one finished within the last 7 days that lists no CRITICAL finding.
package registryx_guard

vuln_type := "https://cosign.sigstore.dev/attestation/vuln/v1"

max_age_ns := ((7 * 24) * 3600) * 1000000000

recent(scan) if {
	finished := time.parse_rfc3339_ns(scan.predicate.metadata.scanFinishedOn)
	time.now_ns() - finished <= max_age_ns
}

critical(scan) := [v.VulnerabilityID |
	some result in object.get(scan.predicate, ["scanner", "result", "Results"], [])
	some v in object.get(result, "Vulnerabilities", [])
	v.Severity == "CRITICAL"
]

clean_recent_scan if {
	some scan in input.attestations[vuln_type]
	recent(scan)
	count(critical(scan)) == 0
}

deny contains msg if {
	not clean_recent_scan
	msg := sprintf("%s: no signed scan within 7 days that lists no CRITICAL vulnerability", [input.image])
}
