"""Download the public epi files into the data directory (``python -m pumamed data fetch epi``).

Every file is fetched from the repository and commit named in its folder's ``SOURCE.txt``
(``raw.githubusercontent.com/<owner>/<repo>/<commit>/<path>``: a pinned commit, so the bytes
cannot change under us) and checked against the sha256 in ``epi_manifest.json`` (computed from the
reference copies). Downloads go through :mod:`pooch` with a progress bar into a temporary folder
and are moved into place only when the checksum matches: a damaged or tampered download is
reported and never installed. A file already present with the right checksum is skipped; one
present with the wrong checksum is reported and replaced by a verified copy.

Files that were derived locally rather than published (the rebuilt GeoJSONs, the year catalogue
whose original name was mojibake) carry no URL and are listed as ``not downloadable``.

``mirror=`` (or ``$PUMAMED_EPI_MIRROR``) replaces every URL by ``<mirror>/<relative path>``, for an
institutional mirror or an offline copy (``file://...``); checksums still apply.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from pumamed.epi.io import epi_dir, sha256_file
from pumamed.errors import DataError, InputError
from pumamed.fetching import FetchResult, PlannedFile, install_verified

log = logging.getLogger(__name__)

MANIFEST_PATH = Path(__file__).with_name("epi_manifest.json")
MIRROR_ENV = "PUMAMED_EPI_MIRROR"
RAW = "https://raw.githubusercontent.com/{repo}/{commit}/{path}"
GRAPHARI_WHEEL = "https://files.pythonhosted.org/packages/py3/g/graphari/graphari-1.1.0-py3-none-any.whl"
GRAPHARI_WHEEL_SHA256 = "e71f4ee9cafdcab4f14db4d097f71008bef15b90717e5c6d825b8ba86e7b64ff"


# Where each file comes from, transcribed from the SOURCE.txt of its folder:
# folder -> list of (local name, repo, commit, path in repo). ``None`` repo: not downloadable.
def _sources() -> dict[str, list[tuple]]:
    rama_commit = "f7d1cc56091eacb2a043fc348d08a63376e99733"
    aire_commit = "09485f1d7b49111a385a77bdd7e2c9eaf9f71030"
    muci_commit = "37780832a502878f7ec94ef25957683f8b6abfd7"
    mxmaps_commit = "798708f6770a24ce86d54128b0f10433cdaaf09c"
    sinaica_commit = "c8e2d6328db755c0b9f054e459c7b161a8f0e972"
    rsinaica_commit = "c22856aa7e5d9bc7e6ae0d09af18e1967f15f53b"
    isaac_commit = "5f7295ae9f6f5abfb7b12cd10047f5d824bc4fce"
    defun_commit = "8ace884715629ce8aa1b0a132fe4a0c63e55b0fa"
    pollutants = ("CO", "NO", "NO2", "NOX", "O3", "PM10", "PM25", "PMCO", "SO2")
    mucinoab = ("IAIM_Entidad.csv", "IAIM_Municipio.csv", "IDH.csv", "IDH_Entidad.csv", "IDH_Municipios.csv",
                "cuartiles_municipios_2020.csv", "defunciones_municipio_2019.csv",
                "fertilidad_entidad_municipio_2020.csv", "indicadores_de_pobreza_municipal_2015_poblacion.csv",
                "indicadores_de_pobreza_municipal_2015_porcentaje.csv", "lat_lon_alt_municipios.csv",
                "nacimientos.csv", "poblacion_entidades.csv", "poblacion_municipios.csv")
    mxmaps_data = ("mxmunicipio.map.RData", "mxstate.map.RData", "df_mxmunicipio.RData", "df_mxstate_2020.RData",
                   "df_mxmunicipio_2020.RData", "df_mxmunicipio_2015.RData")
    catalogs = ("deasismed", "decapgpo", "decapitulo", "decatcausa", "decateml", "decertif", "decomplicaemba",
                "decondact", "decondemba", "dederech", "dedias", "deedad", "deedadagrup", "deedocony", "deesco",
                "degpolisme", "dehoradef", "delengindi", "delista1", "delistamex", "demeses", "demindef",
                "denacion", "denecrop", "deocupa", "deocutrab", "deparenagresor", "depresunto", "derazonm",
                "derelemba", "desexo", "desitiodefun", "desitiolesion", "detamloc", "deurbrur", "deviofam")
    base17 = "catalogos_defs/2017/defunciones_base_datos_2017_csv"
    base18 = "catalogos_defs/2018/defunciones_base_datos_2018_csv"
    sonora = "Fernando-LunaP/Proyecto_Integrador_Ing_Caracteristicas"
    sonora_commit = "af828aed5fbba38817b70411a1029dd852da6c5c"
    return {
        "rama_cdmx_2024_hourly": [
            *[(f"2024{p}.csv", "ingridca8/EcoAware", rama_commit, f"data/2024rama/2024{p}.csv") for p in pollutants],
            ("stations_aire_zmvm.csv", "diegovalle/aire.zmvm", aire_commit, "data-raw/stations.csv"),
            ("zonas_aire_zmvm.csv", "diegovalle/aire.zmvm", aire_commit, "data-raw/zonas.csv"),
        ],
        "rama_cdmx_daily_2015_2023": [("rama_2023_05.csv", "Evelin301204/ProyectoFinal-Analitica",
                                       "2beb3f01670a0728294a92bc151563df7fda3899", "rama_2023_05.csv")],
        "mucinoab_muni_indicators": [(n, "mucinoab/mucinoab.github.io", muci_commit, f"extras/{n}") for n in mucinoab],
        "conapo_imm_2020": [("IMM_2020.csv", "mfql/IMM_2020", "64084802ab29aadeb175c36ba4948049cf0640c8", "IMM_2020.csv")],
        "conapo_imm_1990_2015": [
            (n, "javalmo/marginalizacion_mexico", "4e4d2e4a5164ad1298d82535acea0439202ab7ff", n)
            for n in ("Base_Indice_de_marginacion_municipal_90-15.csv", "Base_Indice_de_marginacion_estatal_90_15.csv")],
        "geo_mxmaps_2020": [
            *[(f"raw/data/{n}", "diegovalle/mxmaps", mxmaps_commit, f"data/{n}") for n in mxmaps_data],
            *[(f"raw/data-raw/censo/{n}", "diegovalle/mxmaps", mxmaps_commit, f"data-raw/censo/{n}")
              for n in ("2020.csv", "afro.csv", "indi.csv", "1990-2010.csv")],
            ("raw/data-raw/metro/ZM_2015.csv", "diegovalle/mxmaps", mxmaps_commit, "data-raw/metro/ZM_2015.csv"),
            ("mun_2020_mxmaps.geojson", None, None, None),  # rebuilt locally from the RData (reference only)
            ("ent_mxmaps.geojson", None, None, None),
        ],
        "sinaica_stations_monthly": [
            *[(n, "LEPS1938/calidad-aire-mexico-shiny", sinaica_commit, f"data/processed/{n}")
              for n in ("monthly_pollution.csv", "weekday_pollution.csv", "map_stations.csv")],
            ("stations_rsinaica.csv", "LEPS1938/calidad-aire-mexico-shiny", sinaica_commit, "data/raw/stations_rsinaica.csv"),
            ("stations_sinaica_rsinaica.csv", "diegovalle/rsinaica", rsinaica_commit, "data-raw/stations_sinaica.csv"),
            ("params_sinaica_rsinaica.csv", "diegovalle/rsinaica", rsinaica_commit, "data-raw/params_sinaica.csv"),
        ],
        "inegi_mg_catalogs_isaacarroyov": [
            ("00ent_mexico.geojson", "isaacarroyov/datos_facil_acceso", isaac_commit,
             "Gobierno-Mexicano/geometrias/00ent_mexico.geojson"),
            *[(n, "isaacarroyov/datos_facil_acceso", isaac_commit, f"GobiernoMexicano/{n}")
              for n in ("cve_nom_municipios.csv", "cve_nom_estados.csv")],
            *[(f"00mun_attributes_only.{e}", "isaacarroyov/datos_facil_acceso", isaac_commit,
               f"GobiernoMexicano/geometrias/og_geoms/00mun.{e}") for e in ("dbf", "prj", "cpg")],
            ("conapo_pob_ent_gender_1950_2070.csv", "isaacarroyov/datos_facil_acceso", isaac_commit,
             "GobiernoMexicano/conapo_proyecciones/conapo_pob_ent_gender_1950_2070.csv"),
        ],
        "era5_weekly_municipal_graphari": [
            *[(n, "wheel:graphari", None, f"graphari/data/{n}")
              for n in ("edges.csv", "2m_mean_temperature.csv", "total_precipitation.csv", "Epidemiological_Weeks.csv")],
            ("LICENSE_graphari_GPL-3.0.txt", None, None, None),
        ],
        "outcomes/covid19_ssa_20200517_national": [
            ("200517COVID19MEXICO.csv.zip", "kny5/covid19_datos_abiertos_mx", "f0f0b8c6a6d83007d16467450f6f5dbd60befa25",
             "datos_covid19_mx.zip"),
            *[(n, "GabrielMissael/Covid_probabilidad", "5d680ac7fc600890e4f16af276f033541f55ef08",
               f"diccionario_datos_covid19/{n}") for n in ("Catalogos_0412.xlsx", "Descriptores_0419.xlsx")],
        ],
        "outcomes/covid19_ssa_bc_bcs_2021_covidmx": [
            ("datos_abiertos_covid19_prueba.zip", "RodrigoZepeda/covidmx", "56ee2f71ce3ba31f38fb09f13fe9f3d47dc6ea46",
             "datos_abiertos_covid19.zip"),
            ("diccionario_datos_covid19_201128.zip", "RodrigoZepeda/covidmx", "56ee2f71ce3ba31f38fb09f13fe9f3d47dc6ea46",
             "diccionario_datos_covid19.zip"),
        ],
        "outcomes/inegi_defun_sonora_2017_2021": [
            *[(f"raw_data_Defunciones{y}.parquet", sonora, sonora_commit, f"datos/raw_data/raw_data_Defunciones{y}.parquet")
              for y in range(2017, 2022)],
            ("raw_data_Habitantes.parquet", sonora, sonora_commit, "datos/raw_data/raw_data_Habitantes.parquet"),
            ("Tidy_data.parquet", sonora, sonora_commit, "datos/tidy_data/Tidy_data.parquet"),
        ],
        "outcomes/ensanut2018_small_area_mun_prevalence": [
            ("a_peq_prev_2018.xlsx", "rojoneon/ensanut_mun", "f2a5792c2a6577ff24f743a633aef7b7ef6cfda3", "a_peq_prev_2018.xlsx")],
        "outcomes/dgis_defun_catalogs_2019_2020": [
            (n, "aaronlara/defunciones_sonora", "48201b7dd15a935770883d917d2ba9438db647b9", f"archivos/{n}")
            for n in ("CATALOGOS_DEFUN_2020.zip", "diccionario_datos_defunciones_2019.csv", "grupo_lista_mexicana.csv")],
        "outcomes/inegi_defun_dictionary_catalogs_2017_2018": [
            *[(f"2017/{c}.csv.gz", "coronamex/mortalidad", defun_commit, f"{base17}/catalogos/{c}.csv.gz") for c in catalogs],
            ("2017/diccionario_datos_defunciones_generales_2017.csv.gz", "coronamex/mortalidad", defun_commit,
             f"{base17}/diccionario_de_datos/diccionario_datos_defunciones_generales_2017.csv.gz"),
            ("2017/metadatos_defunciones_generales_2017.txt.gz", "coronamex/mortalidad", defun_commit,
             f"{base17}/metadatos/metadatos_defunciones_generales_2017.txt.gz"),
            ("2017/indice_tablas_defunciones_generales_2017.csv.gz", "coronamex/mortalidad", defun_commit,
             f"{base17}/indice_tablas_defunciones_generales_2017.csv.gz"),
            *[(f"2018/{c}.csv.gz", "coronamex/mortalidad", defun_commit, f"{base18}/catalogos18/{c}.csv.gz") for c in catalogs],
            ("2018/dicccionario_datos_defunciones_generales_2018_1.csv.gz", "coronamex/mortalidad", defun_commit,
             f"{base18}/dicccionario_datos_defunciones_generales_2018_1.csv.gz"),
            ("2018/deanio.csv.gz", None, None, None),  # original name is mojibake ('dea\u00f1o'): not addressable
        ],
    }


def build_manifest(data_dir) -> dict:
    """Manifest entries (url, sha256, size) computed from reference copies under ``data_dir``;
    used once by the maintainers to write ``epi_manifest.json``."""
    root = epi_dir(data_dir)
    entries = []
    for folder, files in _sources().items():
        for local, repo, commit, path in files:
            target = root / folder / local
            if not target.exists():
                raise DataError(f"reference file missing: {target}")
            if repo is None:
                url = None
            elif repo.startswith("wheel:"):
                url = f"{GRAPHARI_WHEEL}#{path}"
            else:
                url = RAW.format(repo=repo, commit=commit, path=path)
            entries.append({"folder": folder, "path": f"{folder}/{local}", "url": url,
                            "sha256": sha256_file(target), "size": target.stat().st_size})
    return {"version": 1, "wheels": {GRAPHARI_WHEEL: GRAPHARI_WHEEL_SHA256}, "files": entries}


def load_manifest(path: Path | None = None) -> dict:
    path = Path(path or MANIFEST_PATH)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read the epi download manifest {path}: {exc}") from exc


def folders(manifest: dict | None = None) -> list[str]:
    manifest = manifest or load_manifest()
    return list(dict.fromkeys(e["folder"] for e in manifest["files"]))


def manifest_entries(only=None, manifest: dict | None = None) -> list[dict]:
    """Manifest entries, optionally for some dataset folders only (``rama_cdmx_2024_hourly``,
    ``outcomes/ensanut2018_small_area_mun_prevalence`` or just ``ensanut2018_small_area_mun_prevalence``)."""
    manifest = manifest or load_manifest()
    entries = manifest["files"]
    if not only:
        return list(entries)
    known = folders(manifest)
    chosen = []
    for name in only:
        name = name.strip("/")
        match = [f for f in known if f == name or f.split("/")[-1] == name]
        if not match:
            raise InputError(f"unknown epi dataset {name!r}; choose from: {', '.join(f.split('/')[-1] for f in known)}")
        chosen.extend(match)
    return [e for e in entries if e["folder"] in chosen]


def verify_file(path: Path, sha256: str, size: int | None = None) -> bool:
    path = Path(path)
    if not path.exists():
        return False
    if size is not None and path.stat().st_size != size:
        return False
    return sha256_file(path) == sha256


def fetch_epi(data_dir, only=None, dry_run: bool = False, *, mirror: str | None = None,
              manifest: dict | None = None, progressbar: bool = True) -> FetchResult:
    """Download the epi files into ``<data_dir>/epi`` (or ``data_dir`` if it is the epi folder).

    Returns what was planned and done (:class:`pumamed.fetching.FetchResult`; ``.ok`` when every
    requested file is present and verified). ``dry_run`` plans and touches nothing.
    """
    manifest = manifest or load_manifest()
    entries = manifest_entries(only, manifest)
    root = epi_dir(data_dir)
    mirror = (mirror or os.environ.get(MIRROR_ENV) or "").rstrip("/") or None
    plan = []
    for entry in entries:
        target = root / entry["path"]
        if target.exists():
            state = "ok" if verify_file(target, entry["sha256"], entry.get("size")) else "corrupted"
        else:
            state = "missing"
        url = f"{mirror}/{entry['path']}" if mirror else entry.get("url")
        plan.append((entry, target, state, url))

    todo = [p for p in plan if p[2] != "ok"]
    result = FetchResult(root, [PlannedFile(entry["path"], state, url) for entry, _, state, url in plan],
                         download_bytes=sum(p[0].get("size") or 0 for p in todo if p[3]), dry_run=dry_run)
    if dry_run or not todo:
        return result
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {root}: {exc}") from exc
    if not os.access(root, os.W_OK):
        raise DataError(f"the data directory {root} is not writable; choose another with `data_dir`")

    import pooch

    with tempfile.TemporaryDirectory(prefix="pumamed-fetch-") as scratch:
        wheels: dict[str, Path] = {}
        for entry, target, state, url in todo:
            if not url:
                log.info("skipping %s: not downloadable", entry["path"])
                continue
            try:
                downloaded = _download(pooch, entry, url, Path(scratch), wheels, manifest, mirror, progressbar)
            except Exception as exc:  # noqa: BLE001 - report every file, keep going
                result.events.append(("failed", entry["path"], _short(exc)))
                continue
            if not verify_file(downloaded, entry["sha256"], entry.get("size")):
                result.events.append(("rejected", entry["path"], "checksum mismatch, not installed"))
                continue
            install_verified(downloaded, target)
            result.events.append(("installed", entry["path"], ""))
    return result


def _download(pooch, entry, url, scratch: Path, wheels: dict, manifest: dict, mirror, progressbar) -> Path:
    if "#" in url and not mirror:  # member of a wheel (zip) archive
        archive_url, member = url.split("#", 1)
        if archive_url not in wheels:
            known = manifest.get("wheels", {}).get(archive_url)
            wheels[archive_url] = Path(pooch.retrieve(archive_url, known_hash=f"sha256:{known}" if known else None,
                                                      path=scratch, progressbar=progressbar))
        out = scratch / f"member-{Path(member).name}"
        with zipfile.ZipFile(wheels[archive_url]) as archive:
            with archive.open(member) as source, open(out, "wb") as sink:
                shutil.copyfileobj(source, sink)
        return out
    name = f"{abs(hash(entry['path']))}-{Path(entry['path']).name}"
    return Path(pooch.retrieve(url, known_hash=f"sha256:{entry['sha256']}", fname=name, path=scratch,
                               progressbar=progressbar))


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def write_manifest(data_dir, path: Path = MANIFEST_PATH) -> Path:
    """Maintainer tool: write ``epi_manifest.json`` from the reference copies in ``data_dir``."""
    path.write_text(json.dumps(build_manifest(data_dir), indent=1) + "\n", encoding="utf-8")
    return path


if __name__ == "__main__":  # pragma: no cover - maintainer tool: python -m pumamed.epi.fetch DATA_DIR
    import sys

    write_manifest(sys.argv[1])
