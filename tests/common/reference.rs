//! An independent, deliberately naive implementation of the snapshot spec (docs/snapshot-format.md),
//! used as the oracle for the service's output. It shares no code with prerank: it reads
//! `manifest.json` as untyped JSON, the weights with the `safetensors` crate, the binary item files
//! by hand, and computes the tower with plain loops in f64.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

pub struct Reference {
    manifest: Value,
    tensors: HashMap<String, (Vec<usize>, Vec<f64>)>,
    /// id -> row
    rows: HashMap<u64, usize>,
    /// f32 vectors, row-major
    vectors: Vec<f64>,
    dim: usize,
    attrs: Vec<u64>,
    n_attrs: usize,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

impl Reference {
    pub fn open(dir: &Path) -> Reference {
        let manifest: Value =
            serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        let wbytes = std::fs::read(dir.join(manifest["weights_file"].as_str().unwrap())).unwrap();
        let st = safetensors::SafeTensors::deserialize(&wbytes).unwrap();
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            let data = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect();
            tensors.insert(name, (view.shape().to_vec(), data));
        }
        let vfile = manifest["items"]["vectors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["dtype"] == "f32")
            .expect("reference needs f32 vectors")["file"]
            .as_str()
            .unwrap()
            .to_string();
        let vb = std::fs::read(dir.join(vfile)).unwrap();
        let count = u64_at(&vb, 16) as usize;
        let dim = u32_at(&vb, 24) as usize;
        let stride = u32_at(&vb, 28) as usize;
        let off = u64_at(&vb, 32) as usize;
        let mut vectors = Vec::with_capacity(count * dim);
        for r in 0..count {
            for j in 0..dim {
                let at = off + r * stride + 4 * j;
                vectors.push(f32::from_le_bytes(vb[at..at + 4].try_into().unwrap()) as f64);
            }
        }
        let ib =
            std::fs::read(dir.join(manifest["items"]["index_file"].as_str().unwrap())).unwrap();
        let ids_offset = u64_at(&ib, 40) as usize;
        let rows = (0..count)
            .map(|r| (u64_at(&ib, ids_offset + 8 * r), r))
            .collect();
        let ab = std::fs::read(dir.join(manifest["items"]["attributes_file"].as_str().unwrap()))
            .unwrap();
        let n_attrs = u32_at(&ab, 12) as usize;
        let attrs = (0..count * n_attrs)
            .map(|i| u64_at(&ab, 64 + 8 * i))
            .collect();
        Reference {
            manifest,
            tensors,
            rows,
            vectors,
            dim,
            attrs,
            n_attrs,
        }
    }

    fn t(&self, name: &str) -> &(Vec<usize>, Vec<f64>) {
        &self.tensors[name]
    }

    /// Embedding row for a JSON value per the spec's section 3.
    fn row(spec: &Value, v: Option<&Value>) -> usize {
        let v = match v {
            None | Some(Value::Null) => return 0,
            Some(v) => v,
        };
        match spec["kind"].as_str().unwrap() {
            "hashed" => {
                let bytes = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) if n.is_f64() => format!("{}", n.as_f64().unwrap() as i64),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    Value::Null | Value::Array(_) | Value::Object(_) => panic!("bad value"),
                };
                1 + (fnv(bytes.as_bytes()) % spec["buckets"].as_u64().unwrap()) as usize
            }
            _ => {
                let x = v.as_f64().unwrap();
                let b = spec["boundaries"].as_array().unwrap();
                1 + b.iter().filter(|b| b.as_f64().unwrap() <= x).count()
            }
        }
    }

    fn emb(&self, group: &str, spec: &Value, v: Option<&Value>) -> Vec<f64> {
        let dim = spec["dim"].as_u64().unwrap() as usize;
        let r = Self::row(spec, v);
        self.t(&format!("emb.{group}.{}", spec["name"].as_str().unwrap()))
            .1[r * dim..(r + 1) * dim]
            .to_vec()
    }

    fn lin(&self, name: &str, x: &[f64]) -> Vec<f64> {
        let (shape, w) = self.t(&format!("{name}.weight"));
        let b = &self.t(&format!("{name}.bias")).1;
        (0..shape[0])
            .map(|o| {
                b[o] + (0..shape[1])
                    .map(|i| w[o * shape[1] + i] * x[i])
                    .sum::<f64>()
            })
            .collect()
    }

    fn ln(&self, name: &str, x: &[f64], eps: f64) -> Vec<f64> {
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        let g = &self.t(&format!("{name}.weight")).1;
        let b = &self.t(&format!("{name}.bias")).1;
        x.iter()
            .enumerate()
            .map(|(i, v)| (v - mean) / (var + eps).sqrt() * g[i] + b[i])
            .collect()
    }

    /// The user vector for a request's `user` object.
    pub fn user_vector(&self, user: &Value) -> Vec<f64> {
        let m = &self.manifest;
        let f = &m["features"];
        let a = &m["architecture"];
        let d = a["d_model"].as_u64().unwrap() as usize;
        let heads = a["heads"].as_u64().unwrap() as usize;
        let eps = a["layer_norm_eps"].as_f64().unwrap();
        let slope = a["leaky_relu_slope"].as_f64().unwrap();
        let attr_names: Vec<&str> = m["items"]["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let max_len = f["behavior"]["max_len"].as_u64().unwrap() as usize;
        let empty = vec![];
        let behaviors = user["behaviors"].as_array().unwrap_or(&empty);
        let mut x: Vec<Vec<f64>> = Vec::new();
        for b in behaviors.iter().take(max_len) {
            let id = b["item_id"].as_u64().unwrap();
            let mut tok = Vec::new();
            for spec in f["behavior"]["item"].as_array().unwrap() {
                let name = spec["name"].as_str().unwrap();
                let value = if name == "item_id" {
                    Some(Value::from(id))
                } else if let Some(v) = b.get(name) {
                    Some(v.clone())
                } else if let (Some(c), Some(r)) = (
                    attr_names.iter().position(|a| *a == name),
                    self.rows.get(&id),
                ) {
                    Some(Value::from(self.attrs[r * self.n_attrs + c]))
                } else {
                    None
                };
                tok.extend(self.emb("behavior", spec, value.as_ref()));
            }
            for spec in f["behavior"]["extras"].as_array().unwrap() {
                tok.extend(self.emb("behavior", spec, b.get(spec["name"].as_str().unwrap())));
            }
            x.push(tok);
        }
        let n = x.len();
        let mut pooled = vec![0.0; d];
        if n > 0 {
            let q: Vec<Vec<f64>> = x.iter().map(|r| self.lin("attn.q", r)).collect();
            let k: Vec<Vec<f64>> = x.iter().map(|r| self.lin("attn.k", r)).collect();
            let v: Vec<Vec<f64>> = x.iter().map(|r| self.lin("attn.v", r)).collect();
            let dh = d / heads;
            let mut cat = vec![vec![0.0; d]; n];
            for h in 0..heads {
                for i in 0..n {
                    let s: Vec<f64> = (0..n)
                        .map(|j| {
                            (0..dh)
                                .map(|c| q[i][h * dh + c] * k[j][h * dh + c])
                                .sum::<f64>()
                                / (dh as f64).sqrt()
                        })
                        .collect();
                    let mx = s.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = s.iter().map(|z| (z - mx).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for c in 0..dh {
                        cat[i][h * dh + c] = (0..n).map(|j| e[j] / sum * v[j][h * dh + c]).sum();
                    }
                }
            }
            for i in 0..n {
                let a = self.lin("attn.out", &cat[i]);
                let r1: Vec<f64> = x[i].iter().zip(&a).map(|(p, q)| p + q).collect();
                let h1 = self.ln("attn.ln1", &r1, eps);
                let f1: Vec<f64> = self
                    .lin("attn.ffn1", &h1)
                    .into_iter()
                    .map(|z| z.max(0.0))
                    .collect();
                let f2 = self.lin("attn.ffn2", &f1);
                let r2: Vec<f64> = h1.iter().zip(&f2).map(|(p, q)| p + q).collect();
                let h2 = self.ln("attn.ln2", &r2, eps);
                for c in 0..d {
                    pooled[c] += h2[c] / n as f64;
                }
            }
        }
        let mut z = Vec::new();
        for spec in f["user"].as_array().unwrap() {
            let name = spec["name"].as_str().unwrap();
            let v = if name == "user_id" {
                user.get("id")
            } else {
                user.get("features").and_then(|f| f.get(name))
            };
            z.extend(self.emb("user", spec, v));
        }
        z.extend(pooled);
        let leaky = |v: f64| if v >= 0.0 { v } else { slope * v };
        let z: Vec<f64> = self.lin("tower.0", &z).into_iter().map(leaky).collect();
        let z: Vec<f64> = self.lin("tower.1", &z).into_iter().map(leaky).collect();
        let z = self.lin("tower.2", &z);
        let norm = z.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
        z.iter().map(|v| v / norm).collect()
    }

    /// (item_id, score) of every known, distinct candidate, sorted by descending score then id.
    pub fn rank(&self, user: &Value, candidates: &[u64]) -> Vec<(u64, f64)> {
        let u = self.user_vector(user);
        let tau = self.manifest["tau"].as_f64().unwrap();
        let mut seen = std::collections::HashSet::new();
        let mut out: Vec<(u64, f64)> = candidates
            .iter()
            .filter(|id| seen.insert(**id))
            .filter_map(|id| self.rows.get(id).map(|r| (*id, *r)))
            .map(|(id, r)| {
                (
                    id,
                    tau * (0..self.dim)
                        .map(|j| u[j] * self.vectors[r * self.dim + j])
                        .sum::<f64>(),
                )
            })
            .collect();
        out.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
        out
    }

    pub fn ids(&self) -> Vec<u64> {
        let mut v: Vec<(usize, u64)> = self.rows.iter().map(|(id, r)| (*r, *id)).collect();
        v.sort();
        v.into_iter().map(|(_, id)| id).collect()
    }
}
