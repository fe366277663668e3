//! Admission decisions: extracts every image of a Pod or pod template, matches the policies that govern
//! it, and turns verification evidence into an AdmissionResponse (deny, allow with warnings, or a patch).
