//! ONNX import: a ResNet graph, ours or `torch.onnx.export`'s (TorchScript or dynamo
//! exporter), back to a torchvision state dict, so that users can bring their own ONNX files.
//!
//! Exporters fold BatchNorm into the convolutions and name nodes as they like, so the graph is
//! matched by its structure, not its names: from the input, the stem, then each block of a
//! zoo model's plan (the convolutions a block's input feeds, the Relu between them, the Add
//! and its shortcut), then the pooling and `fc`. Every zoo model (and its shortcut options and
//! dilations) is tried; the first whose every shape and attribute fits is the answer. A folded
//! conv's bias becomes its BatchNorm's β, with γ = 1, mean 0 and variance 1 − ε, which
//! computes the same function.

use std::collections::HashMap;
use std::path::Path;

use prost::Message;

use super::onnx::proto::{AttributeProto, ModelProto, NodeProto, TensorProto};
use super::{StateDict, TorchTensor, Values};
use crate::error::{io_err, Error, Result};
use crate::model::{BlockKind, ConvShape, ModelName, ParamKeys, ResNetConfig, Role, Shortcut, ShortcutPlan, Stem};

/// BatchNorm's epsilon in every torchvision ResNet.
const BN_EPS: f32 = 1e-5;
/// Larger files are refused before they are read (resnext101_64x4d is 333 MB).
const MAX_FILE: u64 = 2 << 30;

/// A model read back from ONNX.
pub struct Imported {
    pub name: ModelName,
    pub config: ResNetConfig,
    pub state_dict: StateDict,
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadWeights {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads `path` and finds which zoo model it is (only `model`, when given).
pub fn read_onnx(path: &Path, model: Option<ModelName>) -> Result<Imported> {
    let len = std::fs::metadata(path).map_err(io_err(path))?.len();
    if len > MAX_FILE {
        return Err(bad(path, format!("{len} bytes is more than any zoo model's ONNX file")));
    }
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    parse_onnx(&bytes, path, model)
}

/// [`read_onnx`] on the file's bytes; `path` names it in errors and locates external data.
pub fn parse_onnx(bytes: &[u8], path: &Path, model: Option<ModelName>) -> Result<Imported> {
    let proto = ModelProto::decode(bytes).map_err(|e| bad(path, format!("not an ONNX model: {e}")))?;
    let graph = proto.graph.ok_or_else(|| bad(path, "the ONNX model has no graph"))?;
    let view = View::new(&graph.node, &graph.initializer, path);
    let input = graph
        .input
        .iter()
        .filter_map(|i| i.name.as_deref())
        .find(|n| !view.inits.contains_key(n))
        .ok_or_else(|| bad(path, "the graph has no input"))?;
    let names = model.map_or_else(|| ModelName::ALL.to_vec(), |m| vec![m]);
    // The candidate that matched furthest explains a failure.
    let mut best: Option<(usize, String)> = None;
    for name in names {
        for config in variants(name) {
            let mut w = Walk {
                view: &view,
                keys: ParamKeys::new(&config),
                entries: Vec::new(),
                progress: 0,
            };
            match w.network(&config, input) {
                Ok(classes) => {
                    let mut config = config;
                    config.num_classes = classes;
                    config.in_channels = w.in_channels();
                    let state_dict = w.read_values()?;
                    return Ok(Imported {
                        name,
                        config,
                        state_dict,
                    });
                }
                Err(why) => {
                    if best.as_ref().is_none_or(|(n, _)| w.progress > *n) {
                        best = Some((w.progress, format!("as {name}: {why}")));
                    }
                }
            }
        }
    }
    let why = best.map(|(_, w)| w).unwrap_or_default();
    Err(bad(
        path,
        format!("not a ResNet of the zoo (closest match {why}); `resnet info` lists the models"),
    ))
}

/// The configurations to try for `name`: its shortcut options (CIFAR) and dilations.
fn variants(name: ModelName) -> Vec<ResNetConfig> {
    let base = name.config();
    let mut out = Vec::new();
    let shortcuts = if base.stem == Stem::Cifar && base.residual {
        vec![Shortcut::A, Shortcut::B, Shortcut::C]
    } else {
        vec![base.shortcut]
    };
    let stages = base.layers.len().saturating_sub(1);
    let dilations: Vec<Vec<bool>> = if base.block == BlockKind::Bottleneck {
        (0..1usize << stages)
            .map(|m| (0..stages).map(|i| m >> i & 1 == 1).collect())
            .collect()
    } else {
        vec![vec![false; stages]]
    };
    for s in shortcuts {
        for d in &dilations {
            let mut c = base.clone().with_shortcut(s);
            c.replace_stride_with_dilation = d.clone();
            // Dilation makes a stage's input its output's size: with fewer strides the
            // in_channels/shortcut plans still hold, so the config only needs to validate.
            if c.validate().is_ok() {
                out.push(c);
            }
        }
    }
    out
}

/// The graph indexed by tensor name; `Identity` nodes are seen through.
struct View<'a> {
    path: &'a Path,
    nodes: &'a [NodeProto],
    inits: HashMap<&'a str, &'a TensorProto>,
    producer: HashMap<&'a str, usize>,
    consumers: HashMap<&'a str, Vec<usize>>,
    alias: HashMap<&'a str, &'a str>,
}

impl<'a> View<'a> {
    fn new(nodes: &'a [NodeProto], inits: &'a [TensorProto], path: &'a Path) -> Self {
        let mut v = View {
            path,
            nodes,
            inits: inits.iter().filter_map(|t| Some((t.name.as_deref()?, t))).collect(),
            producer: HashMap::new(),
            consumers: HashMap::new(),
            alias: HashMap::new(),
        };
        for n in nodes.iter().filter(|n| op(n) == "Identity") {
            if let (Some(i), Some(o)) = (n.input.first(), n.output.first()) {
                v.alias.insert(o, i);
            }
        }
        for (i, n) in nodes.iter().enumerate().filter(|(_, n)| op(n) != "Identity") {
            for o in &n.output {
                v.producer.insert(o, i);
            }
            for inp in &n.input {
                let real = v.real(inp);
                v.consumers.entry(real).or_default().push(i);
            }
        }
        v
    }

    /// The tensor `name` stands for, through Identity nodes (bounded: a cycle ends it).
    fn real(&self, mut name: &'a str) -> &'a str {
        for _ in 0..=self.alias.len() {
            match self.alias.get(name) {
                Some(next) => name = next,
                None => break,
            }
        }
        name
    }

    fn consumers(&self, t: &str) -> impl Iterator<Item = &'a NodeProto> + '_ {
        self.consumers.get(t).into_iter().flatten().map(|&i| &self.nodes[i])
    }

    /// The one node that reads `t`, which must be a `want`.
    fn next(&self, t: &str, want: &str) -> std::result::Result<&'a NodeProto, String> {
        let mut c = self.consumers(t);
        match (c.next(), c.next()) {
            (Some(n), None) if op(n) == want => Ok(n),
            (Some(n), None) => Err(format!("expected {want} after `{t}`, found {}", op(n))),
            (None, _) => Err(format!("expected {want} after `{t}`, found nothing")),
            (Some(_), Some(_)) => Err(format!("expected only {want} to read `{t}`")),
        }
    }

    /// A stored float32 weight's dims (its values are read only for the model that fits).
    fn dims(&self, name: &str) -> Step<&'a [i64]> {
        let t = self
            .inits
            .get(self.real(name))
            .ok_or_else(|| format!("`{name}` is computed, not a stored weight"))?;
        if t.data_type != Some(1) {
            return Err(format!("`{name}` is not float32 (ONNX type {:?})", t.data_type));
        }
        Ok(&t.dims)
    }

    /// A weight's values: `raw_data`, `float_data`, or a range of an external data file next
    /// to the model (torch.onnx.export's default), each checked against the dims.
    fn values(&self, name: &str) -> Result<Vec<f32>> {
        let err = |why: String| bad(self.path, format!("`{name}`: {why}"));
        let t = self
            .inits
            .get(self.real(name))
            .ok_or_else(|| err("not stored".into()))?;
        let n = t
            .dims
            .iter()
            .try_fold(1usize, |a, &d| usize::try_from(d).ok().and_then(|d| a.checked_mul(d)))
            .ok_or_else(|| err(format!("bad dims {:?}", t.dims)))?;
        let bytes = if t.data_location == Some(1) {
            self.external(t, n * 4).map_err(err)?
        } else if let Some(raw) = t.raw_data.as_ref().filter(|r| !r.is_empty()) {
            raw.clone()
        } else {
            if t.float_data.len() != n {
                return Err(err(format!("{} values for dims {:?}", t.float_data.len(), t.dims)));
            }
            return Ok(t.float_data.clone());
        };
        if bytes.len() != n * 4 {
            return Err(err(format!("{} bytes for dims {:?}", bytes.len(), t.dims)));
        }
        Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// `len` bytes of an external data file. Only a file beside the model (or below its
    /// folder) is read: a crafted `location` cannot reach other files.
    fn external(&self, t: &TensorProto, len: usize) -> Step<Vec<u8>> {
        use std::io::{Read, Seek, SeekFrom};
        let entry = |k: &str| {
            t.external_data
                .iter()
                .find(|e| e.key.as_deref() == Some(k))
                .and_then(|e| e.value.clone())
        };
        let location = entry("location").ok_or("external data without a location")?;
        let rel = Path::new(&location);
        if rel.is_absolute() || rel.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            return Err(format!("external data location `{location}` leaves the model's folder"));
        }
        let offset: u64 = entry("offset").map_or(Ok(0), |o| o.parse()).map_err(|_| "bad offset")?;
        if let Some(l) = entry("length") {
            if l.parse::<usize>().ok() != Some(len) {
                return Err(format!("external length {l}, expected {len} bytes"));
            }
        }
        let file = self.path.parent().unwrap_or(Path::new(".")).join(rel);
        let mut f = std::fs::File::open(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let size = f.metadata().map_err(|e| e.to_string())?.len();
        if offset.checked_add(len as u64).is_none_or(|end| end > size) {
            return Err(format!(
                "{} holds {size} bytes, not {len} from {offset}",
                file.display()
            ));
        }
        let mut buf = vec![0u8; len];
        f.seek(SeekFrom::Start(offset))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(|e| format!("{}: {e}", file.display()))?;
        Ok(buf)
    }
}

fn op(n: &NodeProto) -> &str {
    n.op_type.as_deref().unwrap_or("")
}

fn attr<'n>(n: &'n NodeProto, name: &str) -> Option<&'n AttributeProto> {
    n.attribute.iter().find(|a| a.name.as_deref() == Some(name))
}

fn ints(n: &NodeProto, name: &str, default: &[i64]) -> Vec<i64> {
    attr(n, name).map_or_else(|| default.to_vec(), |a| a.ints.clone())
}

fn int(n: &NodeProto, name: &str, default: i64) -> i64 {
    attr(n, name).and_then(|a| a.i).unwrap_or(default)
}

fn output(n: &NodeProto) -> std::result::Result<&str, String> {
    n.output
        .first()
        .map(String::as_str)
        .ok_or_else(|| format!("a {} node has no output", op(n)))
}

/// Where a state-dict entry's values come from.
enum Src<'a> {
    Stored(&'a str),
    /// A `[features, classes]` MatMul weight, stored transposed as torch's `[classes, features]`.
    Transposed(&'a str),
    Fill(f32),
    Counter,
}

/// One candidate's walk through the graph, listing the state dict in key order; values are
/// read only once a candidate fits.
struct Walk<'v, 'a> {
    view: &'v View<'a>,
    keys: ParamKeys,
    entries: Vec<(String, Vec<usize>, Src<'a>)>,
    /// Checks passed so far: how far the candidate got.
    progress: usize,
}

type Step<T> = std::result::Result<T, String>;

impl<'a> Walk<'_, 'a> {
    fn key(&mut self, role: Role) -> Step<String> {
        self.keys.next(role).map_err(|e| e.to_string())
    }

    fn put(&mut self, role: Role, shape: Vec<usize>, src: Src<'a>) -> Step<()> {
        let key = self.key(role)?;
        self.entries.push((key, shape, src));
        Ok(())
    }

    fn in_channels(&self) -> usize {
        self.entries.first().map_or(3, |(_, shape, _)| shape[1])
    }

    fn read_values(&self) -> Result<StateDict> {
        let mut sd = StateDict::new();
        for (key, shape, src) in &self.entries {
            let n = shape.iter().product::<usize>();
            let values = match *src {
                Src::Stored(name) => Values::F32(self.view.values(name)?),
                Src::Transposed(name) => {
                    let (c, f) = (shape[0], shape[1]);
                    let v = self.view.values(name)?;
                    Values::F32((0..c * f).map(|i| v[(i % f) * c + i / f]).collect())
                }
                Src::Fill(x) => Values::F32(vec![x; n]),
                Src::Counter => Values::I64(vec![0]),
            };
            sd.insert(
                key.clone(),
                TorchTensor {
                    shape: shape.clone(),
                    values,
                },
            );
        }
        Ok(sd)
    }

    /// A Conv reading `x` with this shape; its weights (and bias, as BN) go into the state dict.
    fn conv(&mut self, n: &'a NodeProto, x: &str, c: ConvShape) -> Step<&'a str> {
        let ConvShape {
            cin,
            cout,
            k,
            stride,
            groups,
            ..
        } = c;
        let name = n.name.clone().unwrap_or_default();
        if op(n) != "Conv" || n.input.first().map(|i| self.view.real(i)) != Some(x) {
            return Err(format!("expected a Conv reading `{x}`, found {} `{name}`", op(n)));
        }
        let (k_, s, d, p) = (k as i64, stride as i64, c.dilation as i64, c.pad() as i64);
        let checks = [
            ("kernel_shape", ints(n, "kernel_shape", &[k_, k_]), vec![k_, k_]),
            ("strides", ints(n, "strides", &[1, 1]), vec![s, s]),
            ("dilations", ints(n, "dilations", &[1, 1]), vec![d, d]),
            ("pads", ints(n, "pads", &[0, 0, 0, 0]), vec![p, p, p, p]),
        ];
        for (what, got, want) in checks {
            if got != want {
                return Err(format!("Conv `{name}`: {what} {got:?}, expected {want:?}"));
            }
            self.progress += 1;
        }
        if int(n, "group", 1) != groups as i64 {
            return Err(format!(
                "Conv `{name}`: group {}, expected {groups}",
                int(n, "group", 1)
            ));
        }
        let w = n.input.get(1).ok_or_else(|| format!("Conv `{name}` has no weight"))?;
        let dims = self.view.dims(w)?;
        let shape = [cout, cin / groups, k, k];
        if dims != shape.map(|v| v as i64) {
            return Err(format!("Conv `{name}`: weight {dims:?}, expected {shape:?}"));
        }
        let bias = match n.input.get(2).filter(|b| !b.is_empty()) {
            Some(b) if self.view.dims(b)? == [cout as i64] => Src::Stored(b),
            Some(b) => {
                return Err(format!(
                    "Conv `{name}`: bias {:?}, expected [{cout}]",
                    self.view.dims(b)?
                ))
            }
            None => Src::Fill(0.0),
        };
        self.put(Role::ConvWeight, shape.to_vec(), Src::Stored(w))?;
        self.put(Role::BnWeight, vec![cout], Src::Fill(1.0))?;
        self.put(Role::BnBias, vec![cout], bias)?;
        self.put(Role::RunningMean, vec![cout], Src::Fill(0.0))?;
        self.put(Role::RunningVar, vec![cout], Src::Fill(1.0 - BN_EPS))?;
        self.put(Role::BatchCounter, vec![], Src::Counter)?;
        self.progress += 1;
        output(n)
    }

    /// The Relu reading `t`, and its output.
    fn relu(&self, t: &str) -> Step<&'a str> {
        output(self.view.next(t, "Relu")?)
    }

    /// The Conv nodes reading `x`: the one a Relu follows (the main path) and the one an Add
    /// follows (a projection shortcut).
    fn block_convs(&self, x: &str) -> (Option<&'a NodeProto>, Option<&'a NodeProto>) {
        let (mut main, mut proj) = (None, None);
        for n in self.view.consumers(x).filter(|n| op(n) == "Conv") {
            let after = n.output.first().and_then(|o| self.view.consumers(o).next()).map(op);
            match after {
                Some("Add") => proj = Some(n),
                _ => main = Some(n),
            }
        }
        (main, proj)
    }

    /// The whole network from the graph input `x`; returns the number of classes.
    fn network(&mut self, c: &ResNetConfig, x: &'a str) -> Step<usize> {
        let stem = self
            .view
            .consumers(x)
            .find(|n| op(n) == "Conv")
            .ok_or("no Conv reads the input")?;
        let cin = self
            .view
            .dims(stem.input.get(1).map_or("", String::as_str))?
            .get(1)
            .copied();
        let cin = cin
            .filter(|&c| c > 0)
            .ok_or("the stem Conv's weight has no input channels")? as usize;
        let mut h = self.conv(stem, x, ConvShape { cin, ..c.stem_conv() })?;
        h = self.relu(h)?;
        if c.stem == Stem::ImageNet {
            let pool = self.view.next(h, "MaxPool")?;
            let (ks, st, pads) = (
                ints(pool, "kernel_shape", &[]),
                ints(pool, "strides", &[1, 1]),
                ints(pool, "pads", &[0; 4]),
            );
            if (ks.as_slice(), st.as_slice(), pads.as_slice()) != (&[3, 3][..], &[2, 2][..], &[1, 1, 1, 1][..]) {
                return Err(format!(
                    "MaxPool kernel {ks:?} strides {st:?} pads {pads:?}, expected 3×3, 2, 1"
                ));
            }
            h = output(pool)?;
        }
        for p in c.plan().into_iter().flatten() {
            let x = h;
            let (main, proj) = self.block_convs(x);
            let main = main.ok_or_else(|| format!("no block Conv reads `{x}`"))?;
            let mut y = x;
            for (i, spec) in p.main_convs(c.block).into_iter().enumerate() {
                let n = if i == 0 {
                    main
                } else {
                    y = self.relu(y)?;
                    self.view.next(y, "Conv")?
                };
                y = self.conv(n, y, spec)?;
            }
            let sum = match p.shortcut {
                ShortcutPlan::None => y,
                plan => {
                    let add = self.view.next(y, "Add")?;
                    let other = add
                        .input
                        .iter()
                        .map(|i| self.view.real(i))
                        .find(|&i| i != y)
                        .ok_or("an Add with one input")?;
                    let from = self.view.producer.get(other).map(|&i| &self.view.nodes[i]);
                    match plan {
                        ShortcutPlan::Identity if other == x => {}
                        ShortcutPlan::Projection => {
                            let n = proj.filter(|n| output(n).ok() == Some(other));
                            let n = n.ok_or("expected a projection Conv on the shortcut")?;
                            self.conv(n, x, p.projection())?;
                        }
                        // Option A: parameter-free ops (slice, pad) from the block's input.
                        ShortcutPlan::ZeroPad if other != x && from.is_some_and(|n| op(n) != "Conv") => {}
                        _ => return Err(format!("the shortcut into `{}` is not {plan:?}", output(add)?)),
                    }
                    output(add)?
                }
            };
            h = self.relu(sum)?;
        }
        self.head(h, c.feature_dim())
    }

    /// Global average pooling, flattening, then `fc` (Gemm, or MatMul and Add).
    fn head(&mut self, mut h: &'a str, features: usize) -> Step<usize> {
        let mut pooled = false;
        let fc = loop {
            let mut next = self.view.consumers(h);
            let n = match (next.next(), next.next()) {
                (Some(n), None) => n,
                _ => return Err(format!("expected one node after `{h}`")),
            };
            match op(n) {
                "GlobalAveragePool" => pooled = true,
                "ReduceMean" => {
                    let mut axes = ints(n, "axes", &[]);
                    if let Some(a) = n.input.get(1) {
                        axes = self.view.inits.get(self.view.real(a)).map_or(vec![], |t| {
                            t.raw_data
                                .as_deref()
                                .unwrap_or_default()
                                .chunks_exact(8)
                                .map(|b| i64::from_le_bytes(b.try_into().unwrap_or_default()))
                                .collect()
                        });
                    }
                    axes.sort();
                    if axes != [2, 3] && axes != [-2, -1] {
                        return Err(format!("ReduceMean over axes {axes:?}, not the spatial ones"));
                    }
                    pooled = true;
                }
                "Flatten" | "Reshape" | "Squeeze" => {}
                "Gemm" | "MatMul" => break n,
                other => return Err(format!("unexpected {other} before fc")),
            }
            h = output(n)?;
        };
        if !pooled {
            return Err("no global average pooling before fc".into());
        }
        let w = fc.input.get(1).ok_or("fc has no weight")?;
        let dims = self.view.dims(w)?;
        let trans_b = op(fc) == "Gemm" && int(fc, "transB", 0) == 1;
        let scaled = attr(fc, "alpha").and_then(|a| a.f).unwrap_or(1.0) != 1.0;
        if op(fc) == "Gemm" && (int(fc, "transA", 0) != 0 || scaled) {
            return Err("fc's Gemm transposes A or scales".into());
        }
        let f = features as i64;
        let (classes, src) = match (dims, trans_b) {
            ([c, g], true) if *g == f => (*c as usize, Src::Stored(w)),
            ([g, c], false) if *g == f => (*c as usize, Src::Transposed(w)),
            _ => return Err(format!("fc weight {dims:?} does not take {features} features")),
        };
        let bias = match op(fc) {
            "Gemm" => fc.input.get(2).map(String::as_str).filter(|b| !b.is_empty()),
            _ => {
                let add = self.view.next(output(fc)?, "Add")?;
                add.input
                    .iter()
                    .map(String::as_str)
                    .find(|i| self.view.inits.contains_key(self.view.real(i)))
            }
        };
        let bias = match bias {
            Some(b) if self.view.dims(b)? == [classes as i64] => Src::Stored(b),
            Some(b) => return Err(format!("fc bias {:?} for {classes} classes", self.view.dims(b)?)),
            None => Src::Fill(0.0),
        };
        self.put(Role::FcWeight, vec![classes, features], src)?;
        self.put(Role::FcBias, vec![classes], bias)?;
        Ok(classes)
    }
}
