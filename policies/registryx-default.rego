# RegistryX's default policy-editor module (Rego v0), runnable unchanged by registryx-guard.
# input.is_signed is what registryx-guard verified cryptographically, never RegistryX's own flag;
# input.vulnerabilities comes from RegistryX's REST API when the policy sets spec.registry.registryxApi.
package registryx.policy

default allow = true

# Images with critical vulnerabilities are refused.
violations[msg] {
    input.vulnerabilities.critical > 0
    msg := sprintf("%s has %d critical vulnerabilities", [input.image, input.vulnerabilities.critical])
}

# Unsigned images are refused.
violations[msg] {
    not input.is_signed
    msg := sprintf("%s is not signed", [input.image])
}

allow = false {
    count(violations) > 0
}
