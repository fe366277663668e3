# SLSA v1 provenance (cosign attest --type slsaprovenance1) from the release workflow of one source
# repository (Rego v1). The authority's `attestations: [{type: slsaprovenance1}]` makes sure a signed one
# exists; this module decides on what it says. Every verified provenance must pass.
package registryx_guard

provenance_type := "https://slsa.dev/provenance/v1"

trusted_builder_prefix := "https://github.com/acme/.github/workflows/release.yml@"

trusted_source := "https://github.com/acme/app"

deny contains msg if {
	not input.attestations[provenance_type]
	msg := sprintf("%s: no verified SLSA v1 provenance", [input.image])
}

deny contains msg if {
	some p in input.attestations[provenance_type]
	builder := object.get(p.predicate, ["runDetails", "builder", "id"], "")
	not startswith(builder, trusted_builder_prefix)
	msg := sprintf("%s: built by %q, not by the release workflow", [input.image, builder])
}

deny contains msg if {
	some p in input.attestations[provenance_type]
	source := object.get(p.predicate, ["buildDefinition", "externalParameters", "workflow", "repository"], "")
	source != trusted_source
	msg := sprintf("%s: built from %q, not from %s", [input.image, source, trusted_source])
}
