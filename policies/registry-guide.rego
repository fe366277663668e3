# In RegistryX Policy Editor
package registry

deny[msg] {
    input.operation == "pull"
    not input.signed
    msg := "Only signed images are allowed"
}
