//! Update phase of a mini-batch: the gradient-norm clip and the optimizer step, on the gradients the
//! [`GradientSync`](crate::step::GradientSync) has summed over all processes.
use crate::optimizer::AdamW;

/// Clips the global gradient norm to `max_grad_norm` (0: no clip) and steps the optimizer unless the
/// norm is not finite. Returns the norm before clipping and whether the step was taken.
pub(crate) fn clip_and_step(optimizer: &mut AdamW, max_grad_norm: f64) -> (f64, bool) {
    let norm = optimizer.clip_grad_norm(max_grad_norm);
    let finite = norm.is_finite();
    if finite {
        optimizer.step();
    }
    (norm, finite)
}
