//! Adagrad (Duchi et al., 2011) as a candle [`Optimizer`], with the paper's linear learning-rate
//! warm-up.
//!
//! The update rule is not a gradient computation (gradients come from candle's autodiff):
//! `acc += g^2; w -= lr_t * g / (sqrt(acc) + eps)`, where `lr_t` rises linearly from `lr / warmup` to
//! `lr` over the first `warmup_steps` steps and then stays at `lr` (section 5.1 of the paper).
//! Parameters without a gradient in a step (e.g. the teacher when only the distillation loss is
//! differentiated) are left untouched, accumulator included.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use candle_nn::Optimizer;

/// Settings of [`Adagrad`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdagradConfig {
    /// Learning rate after warm-up.
    pub lr: f64,
    /// Initial accumulator value (TensorFlow's default is 0.1).
    pub initial_accumulator: f64,
    pub eps: f64,
    /// Steps of linear warm-up (0 = none).
    pub warmup_steps: usize,
}

impl Default for AdagradConfig {
    fn default() -> Self {
        AdagradConfig {
            lr: 0.05,
            initial_accumulator: 0.1,
            eps: 1e-10,
            warmup_steps: 0,
        }
    }
}

/// Adagrad over a set of [`Var`]s.
#[derive(Debug)]
pub struct Adagrad {
    vars: Vec<(Var, Tensor)>,
    cfg: AdagradConfig,
    step: usize,
}

impl Adagrad {
    /// Learning rate used at optimizer step `step` (0-based).
    pub fn scheduled_lr(cfg: &AdagradConfig, step: usize) -> f64 {
        if cfg.warmup_steps == 0 || step >= cfg.warmup_steps {
            cfg.lr
        } else {
            cfg.lr * (step + 1) as f64 / cfg.warmup_steps as f64
        }
    }

    pub fn steps(&self) -> usize {
        self.step
    }
}

impl Optimizer for Adagrad {
    type Config = AdagradConfig;

    fn new(vars: Vec<Var>, cfg: AdagradConfig) -> candle_core::Result<Self> {
        let vars = vars
            .into_iter()
            .filter(|v| v.dtype().is_float())
            .map(|v| {
                let acc = Tensor::full(cfg.initial_accumulator as f32, v.shape(), v.device())?;
                Ok((v, acc))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Adagrad { vars, cfg, step: 0 })
    }

    fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        let lr = Self::scheduled_lr(&self.cfg, self.step);
        for (var, acc) in self.vars.iter_mut() {
            if let Some(g) = grads.get(var) {
                let new_acc = (&*acc + g.sqr()?)?;
                let update = (g / (new_acc.sqrt()? + self.cfg.eps)?)?;
                var.set(&(var.as_tensor() - (update * lr)?)?)?;
                *acc = new_acc;
            }
        }
        self.step += 1;
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        Self::scheduled_lr(&self.cfg, self.step)
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn adagrad_minimises_a_quadratic_and_warms_up() {
        let cfg = AdagradConfig {
            lr: 0.5,
            warmup_steps: 10,
            ..AdagradConfig::default()
        };
        assert!((Adagrad::scheduled_lr(&cfg, 0) - 0.05).abs() < 1e-12);
        assert!((Adagrad::scheduled_lr(&cfg, 9) - 0.5).abs() < 1e-12);
        assert!((Adagrad::scheduled_lr(&cfg, 100) - 0.5).abs() < 1e-12);
        let x = Var::new(&[3.0f32, -2.0], &Device::Cpu).expect("var");
        let mut opt = Adagrad::new(vec![x.clone()], cfg).expect("opt");
        for _ in 0..300 {
            let loss = x.as_tensor().sqr().and_then(|t| t.sum_all()).expect("loss");
            opt.backward_step(&loss).expect("step");
        }
        let v = x.as_tensor().to_vec1::<f32>().expect("vec");
        assert!(v.iter().all(|a| a.abs() < 0.05), "{v:?}");
    }
}
