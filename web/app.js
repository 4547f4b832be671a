// The page: reads model.json (the sidecar pytorch2onnx.py writes) and model.onnx, runs chosen or dropped images and
// the webcam through onnxruntime-web's WASM backend, draws and lists the detections. The sliders re-filter the boxes
// decoded from the last run (detect.js) without running the model again. window.tinydet holds what a test reads:
// ready, error, runs (model runs so far), conf, iou and results (per image: name, size, timing, detections).
'use strict';

(() => {
  const SIDECAR_KEYS = ['input_width', 'input_height', 'letterbox', 'head', 'strides', 'anchors_px', 'num_classes',
                        'class_names', 'conf_thresh', 'nms_iou', 'input_blob', 'output_blobs'];
  const state = {ready: false, error: null, runs: 0, threads: 1, conf: null, iou: null, results: []};
  window.tinydet = state;
  const element = (id) => document.getElementById(id);
  let sidecar = null;
  let session = null;
  let images = [];           // per shown image: {name, source, candidates, info, timing, card}
  let webcam = null;         // while the webcam runs: {stream, frame (canvas), candidates, info, timing}
  let queue = Promise.resolve();   // one model run at a time: a session does not run concurrently

  function showStatus(text) {
    const status = element('status');
    status.textContent = text;
    status.classList.remove('error');
  }

  function showError(error) {
    const message = error instanceof Error ? error.message : String(error);
    state.error = message;
    const status = element('status');
    status.textContent = `Error: ${message}`;
    status.classList.add('error');
  }

  /** WASM threads: ?threads=N in the address, 1 by default. More than one needs SharedArrayBuffer, which a
   * browser gives only to a cross-origin isolated page. */
  function chooseThreads() {
    const asked = Number.parseInt(new URLSearchParams(location.search).get('threads') || '1', 10);
    const wanted = Number.isFinite(asked) && asked > 0 ? asked : 1;
    const howToIsolate = 'serve the folder with the headers "Cross-Origin-Opener-Policy: same-origin" and ' +
                         '"Cross-Origin-Embedder-Policy: require-corp" (python3 -m http.server sends neither)';
    let note;
    let threads = wanted;
    if (wanted > 1 && !self.crossOriginIsolated) {
      threads = 1;
      note = `Asked for ${wanted} threads, running on 1: this page is not cross-origin isolated; ${howToIsolate}.`;
    } else if (wanted > 1) {
      note = `Inference runs on ${wanted} WASM threads.`;
    } else {
      note = `Inference runs on 1 WASM thread. For more, ${howToIsolate}, then open index.html?threads=4.`;
    }
    element('threads-note').textContent = note;
    return threads;
  }

  async function loadModel() {
    const response = await fetch('model.json');
    if (!response.ok) {
      throw new Error(`model.json: ${response.status} ${response.statusText} (the sidecar belongs beside index.html)`);
    }
    sidecar = await response.json();
    const missing = SIDECAR_KEYS.filter((key) => !(key in sidecar));
    if (missing.length) {
      throw new Error(`model.json: keys ${missing.join(', ')} are missing (pytorch2onnx.py --web writes them)`);
    }
    if (!['bgr', 'rgb'].includes(sidecar.channel_order ?? 'bgr')) {
      throw new Error(`model.json: channel_order "${sidecar.channel_order}" (expected "bgr" or "rgb")`);
    }
    state.threads = chooseThreads();
    ort.env.wasm.numThreads = state.threads;
    ort.env.wasm.wasmPaths = new URL('./', location.href).href;   // the .wasm and .mjs copied beside this page
    session = await ort.InferenceSession.create('model.onnx', {executionProviders: ['wasm']});
    const absent = [sidecar.input_blob, ...sidecar.output_blobs].filter(
      (name) => !session.inputNames.includes(name) && !session.outputNames.includes(name));
    if (absent.length) {
      throw new Error(`model.json names blobs ${absent.join(', ')} that model.onnx does not have ` +
                      `(it has inputs ${session.inputNames.join(', ')}, outputs ${session.outputNames.join(', ')})`);
    }
    const resize = sidecar.letterbox ? 'letterboxed' : 'stretched';
    element('model-info').textContent =
      `${sidecar.head} head, ${sidecar.input_width}x${sidecar.input_height} input (${resize}), ` +
      `${sidecar.num_classes} classes, strides ${sidecar.strides.join(', ')}; onnxruntime-web ` +
      `${ort.env.versions?.web ?? ''} (WASM)`;
    setUpSliders();
  }

  function setUpSliders() {
    for (const [key, sliderId, valueId] of [['conf', 'conf-slider', 'conf-value'], ['iou', 'iou-slider', 'iou-value']]) {
      const slider = element(sliderId);
      slider.value = key === 'conf' ? sidecar.conf_thresh : sidecar.nms_iou;
      const update = () => {
        state[key] = Number(slider.value);
        element(valueId).textContent = state[key].toFixed(2);
      };
      update();
      slider.addEventListener('input', () => {
        update();
        refilter();
      });
    }
  }

  /** One image's RGBA pixels -> the decoded boxes (before the threshold and NMS) and the times taken. */
  function runModel(rgba, width, height) {
    const run = async () => {
      const start = performance.now();
      const {rgb, info} = tinydetDetect.resizeImage(rgba, width, height, sidecar);
      const input = new ort.Tensor('float32', tinydetDetect.toInputData(rgb, sidecar),
                                   [1, 3, sidecar.input_height, sidecar.input_width]);
      const beforeRun = performance.now();
      const outputs = await session.run({[sidecar.input_blob]: input});
      const afterRun = performance.now();
      const candidates = tinydetDetect.decode(sidecar.output_blobs.map((name) => outputs[name]), sidecar);
      state.runs += 1;
      return {candidates, info, timing: {preprocess_ms: beforeRun - start, inference_ms: afterRun - beforeRun,
                                         decode_ms: performance.now() - afterRun}};
    };
    queue = queue.then(run, run);
    return queue;
  }

  function pixelsOf(source, width, height) {
    const canvas = document.createElement('canvas');
    canvas.width = width;
    canvas.height = height;
    const context = canvas.getContext('2d', {willReadFrequently: true});
    context.drawImage(source, 0, 0);
    return {canvas, rgba: context.getImageData(0, 0, width, height).data};
  }

  function detectionsOf(shown) {
    const start = performance.now();
    const detections = tinydetDetect.selectDetections(shown.candidates, shown.info, state.conf, state.iou)
      .map((d) => ({class_name: className(d.class_id), ...d}));
    shown.timing.nms_ms = performance.now() - start;
    return detections;
  }

  function className(index) {
    return index < sidecar.class_names.length ? sidecar.class_names[index] : String(index);
  }

  function classColour(index) {
    return `hsl(${Math.round((index * 137.508) % 360)}, 85%, 42%)`;
  }

  function draw(canvas, source, detections) {
    canvas.width = source.width;
    canvas.height = source.height;
    const context = canvas.getContext('2d');
    context.drawImage(source, 0, 0);
    const lineWidth = Math.max(2, Math.round(Math.max(canvas.width, canvas.height) / 300));
    const fontPx = Math.max(12, lineWidth * 6);
    context.font = `${fontPx}px sans-serif`;
    context.textBaseline = 'top';
    for (const d of detections) {
      const colour = classColour(d.class_id);
      context.strokeStyle = colour;
      context.lineWidth = lineWidth;
      context.strokeRect(d.x1, d.y1, d.x2 - d.x1, d.y2 - d.y1);
      const label = `${d.class_name} ${d.score.toFixed(2)}`;
      const labelWidth = context.measureText(label).width + 2 * lineWidth;
      const labelHeight = fontPx + 2 * lineWidth;
      const top = d.y1 >= labelHeight ? d.y1 - labelHeight : d.y1;
      context.fillStyle = colour;
      context.fillRect(d.x1 - lineWidth / 2, top, labelWidth, labelHeight);
      context.fillStyle = 'white';
      context.fillText(label, d.x1 + lineWidth / 2, top + lineWidth);
    }
  }

  function timingText(timing, count) {
    return `${count} detection${count === 1 ? '' : 's'}; inference ${timing.inference_ms.toFixed(1)} ms ` +
           `(pre-processing ${timing.preprocess_ms.toFixed(1)} ms, decode ${timing.decode_ms.toFixed(1)} ms, ` +
           `threshold + NMS ${timing.nms_ms.toFixed(1)} ms)`;
  }

  function listDetections(tbody, detections) {
    tbody.replaceChildren(...detections.map((d, i) => {
      const row = document.createElement('tr');
      const cells = [i + 1, d.class_name, d.score.toFixed(3), ...[d.x1, d.y1, d.x2, d.y2].map((v) => v.toFixed(1))];
      row.replaceChildren(...cells.map((value) => {
        const cell = document.createElement('td');
        cell.textContent = value;
        return cell;
      }));
      row.querySelector('td:nth-child(2)').style.color = classColour(d.class_id);
      return row;
    }));
  }

  function showImage(shown) {
    const detections = detectionsOf(shown);
    draw(shown.card.querySelector('canvas'), shown.source, detections);
    listDetections(shown.card.querySelector('tbody'), detections);
    shown.card.querySelector('.timing').textContent = timingText(shown.timing, detections.length);
    return {name: shown.name, width: shown.info.width, height: shown.info.height, timing: {...shown.timing},
            detections};
  }

  function refilter() {
    state.results = images.map(showImage);
    summarise();
  }

  function summarise() {
    const count = state.results.reduce((sum, result) => sum + result.detections.length, 0);
    showStatus(`${state.results.length} image${state.results.length === 1 ? '' : 's'}, ${count} detections ` +
               `at confidence > ${state.conf.toFixed(2)}, NMS IoU ${state.iou.toFixed(2)}.`);
  }

  async function detectFiles(files) {
    const chosen = [...files].filter((file) => file.type.startsWith('image/') || file.type === '');
    if (!chosen.length) {
      return;
    }
    state.error = null;
    images = [];
    state.results = [];
    element('results').replaceChildren();
    for (const [n, file] of chosen.entries()) {
      showStatus(`Running ${file.name} (${n + 1} of ${chosen.length})...`);
      let bitmap;
      try {
        // the decoded pixels as they are: no colour-profile conversion, as OpenCV reads them
        bitmap = await createImageBitmap(file, {colorSpaceConversion: 'none', premultiplyAlpha: 'none'});
      } catch {
        showError(`${file.name}: the browser cannot decode it as an image`);
        continue;
      }
      const {canvas, rgba} = pixelsOf(bitmap, bitmap.width, bitmap.height);
      bitmap.close();
      const card = element('result-template').content.firstElementChild.cloneNode(true);
      card.querySelector('.result-name').textContent = file.name;
      element('results').append(card);
      const shown = {name: file.name, source: canvas, card, ...await runModel(rgba, canvas.width, canvas.height)};
      images.push(shown);
      state.results.push(showImage(shown));
    }
    summarise();
  }

  async function startWebcam() {
    const stream = await navigator.mediaDevices.getUserMedia({video: true, audio: false});
    const video = element('webcam-video');
    video.srcObject = stream;
    await video.play();
    webcam = {stream};
    element('webcam-view').hidden = false;
    element('webcam-button').textContent = 'Stop the webcam';
    const nextFrame = async () => {
      if (!webcam || webcam.stream !== stream) {
        return;
      }
      const {canvas, rgba} = pixelsOf(video, video.videoWidth, video.videoHeight);
      Object.assign(webcam, {source: canvas}, await runModel(rgba, canvas.width, canvas.height));
      if (webcam && webcam.stream === stream) {
        const detections = detectionsOf(webcam);
        draw(element('webcam-canvas'), canvas, detections);
        element('webcam-timing').textContent = timingText(webcam.timing, detections.length);
        requestAnimationFrame(() => nextFrame().catch(showError));
      }
    };
    await nextFrame();
  }

  function stopWebcam() {
    webcam.stream.getTracks().forEach((track) => track.stop());
    element('webcam-video').srcObject = null;
    webcam = null;
    element('webcam-view').hidden = true;
    element('webcam-button').textContent = 'Start the webcam';
  }

  function setUpInputs() {
    const input = element('file-input');
    input.addEventListener('change', () => detectFiles(input.files).catch(showError));
    document.addEventListener('dragover', (event) => {
      event.preventDefault();
      document.body.classList.add('dragging');
    });
    document.addEventListener('dragleave', () => document.body.classList.remove('dragging'));
    document.addEventListener('drop', (event) => {
      event.preventDefault();
      document.body.classList.remove('dragging');
      detectFiles(event.dataTransfer.files).catch(showError);
    });
    const button = element('webcam-button');
    if (navigator.mediaDevices?.getUserMedia) {
      button.disabled = false;
      button.addEventListener('click', () => (webcam ? stopWebcam() : startWebcam().catch(showError)));
    } else {
      button.title = 'This browser gives no webcam to this page (it needs https or localhost).';
    }
  }

  loadModel()
    .then(() => {
      setUpInputs();
      state.ready = true;
      showStatus('Ready: choose or drop images.');
    })
    .catch(showError);
})();
