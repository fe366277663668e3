//! Which policies govern an image, as far as its reference tells: bytes before names, and a tag's own
//! policies only once the registry shows that the tag names the digest.

use super::CompiledPolicy;
use crate::registry::ImageRef;

/// Which policies decide an image, as far as its reference alone can tell.
#[derive(Debug)]
pub struct PolicyChoice<'a, P> {
    /// The policies that decide, unless the registry shows what `if_tag_names_digest` needs.
    pub policies: Vec<&'a P>,
    /// For `repo:tag@digest` whose tag picks other policies than the digest alone: the tag's, which
    /// decide instead once the registry shows that the tag names that digest.
    pub if_tag_names_digest: Option<Vec<&'a P>>,
}

/// The policies of `policies` that govern `image`, bytes before names.
///
/// A glob over tags (`repo:1.*`) also governs that repository's digests, so a digest-only reference
/// (`repo@sha256:...`) is decided by every policy whose globs reach the repository: the bytes could be
/// any tag's. A reference with a tag and a digest (`repo:prod-1@sha256:...`, what pinning writes) is
/// pulled by its digest alone, the tag being only a label the runtime ignores; so it is decided as the
/// digest alone is, and by its tag's policies only once the registry shows that the tag names that
/// digest (`if_tag_names_digest`, settled by `decide::settle_policies`). That keeps policies split by
/// tag (`:dev-*` with one key, `:prod-*` with another) applying to their own pinned tags, while a
/// made-up `:dev-x@<a prod digest>` cannot pick the weaker of the two.
pub fn choose_policies<'a, P>(
    policies: impl IntoIterator<Item = &'a P> + Clone,
    image: &ImageRef,
) -> PolicyChoice<'a, P>
where
    P: AsRef<CompiledPolicy> + 'a,
{
    let governs = |image: &ImageRef| {
        let image = image.clone();
        move |p: &&'a P| {
            let p = p.as_ref();
            p.governs(&image) || (image.tag.is_none() && p.governs_by_digest(&image))
        }
    };
    let direct: Vec<&P> = policies
        .clone()
        .into_iter()
        .filter(governs(image))
        .collect();
    if image.digest.is_none() || image.tag.is_none() {
        return PolicyChoice {
            policies: direct,
            if_tag_names_digest: None,
        };
    }
    let bytes = ImageRef {
        tag: None,
        ..image.clone()
    };
    let by_digest: Vec<&P> = policies.into_iter().filter(governs(&bytes)).collect();
    let same = direct.len() == by_digest.len()
        && direct
            .iter()
            .zip(&by_digest)
            .all(|(a, b)| std::ptr::eq(a.as_ref(), b.as_ref()));
    if same || by_digest.is_empty() || direct.is_empty() {
        // One answer either way; or no policy reaches the bytes but the tag's (its rules, rather than
        // none); or the tag names no policy (the digest's, as before).
        let policies = if by_digest.is_empty() {
            direct
        } else {
            by_digest
        };
        return PolicyChoice {
            policies,
            if_tag_names_digest: None,
        };
    }
    PolicyChoice {
        policies: by_digest,
        if_tag_names_digest: Some(direct),
    }
}

/// The policies that govern `image` without asking its registry anything: [`choose_policies`]'s
/// `policies`, the stricter choice for a reference with a tag and a digest.
pub fn governing_policies<'a, P>(
    policies: impl IntoIterator<Item = &'a P> + Clone,
    image: &ImageRef,
) -> Vec<&'a P>
where
    P: AsRef<CompiledPolicy> + 'a,
{
    choose_policies(policies, image).policies
}
